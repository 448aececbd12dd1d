"""Prometheus metrics of one gateway (own registry, so tests can run several apps)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "akidb_gateway_requests",
            "Embedding requests by API, model and HTTP status",
            ["api", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "akidb_gateway_request_seconds",
            "Embedding request latency through the gateway (cold waits included)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "akidb_gateway_cold_starts",
            "Cold starts the gateway waited for (one per coalesced demand)",
            ["model"],
            registry=self.registry,
        )
        self.cold_start_seconds = Histogram(
            "akidb_gateway_cold_start_seconds",
            "Time from marking demand to a ready pod",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.waiting = Gauge(
            "akidb_gateway_waiting_requests",
            "Requests held for a cold model",
            ["model"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "akidb_gateway_upstream_errors",
            "Failed calls to model-server pods by kind (connect, unavailable, timeout)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "akidb_gateway_retries",
            "Requests retried on another pod or after re-activation",
            ["model"],
            registry=self.registry,
        )
        self.status_patches = Counter(
            "akidb_gateway_status_patches",
            "EmbeddingModel status patches by field and outcome",
            ["field", "outcome"],
            registry=self.registry,
        )

        self._observers: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, api: str, model: str, status: int, seconds: float | None) -> None:
        """Count one request (and its latency, when it named a known model).

        The labelled children are looked up once per (api, model, status): prometheus'
        `labels()` costs more than the rest of this call (it is on every request)."""
        key = (api, model, status)
        pair = self._observers.get(key)
        if pair is None:
            pair = self._observers[key] = (
                self.requests.labels(api, model, str(status)),
                self.latency.labels(model),
            )
        pair[0].inc()
        if seconds is not None:
            pair[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
