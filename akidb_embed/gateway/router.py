"""Routing of model calls to model-server pods: warm path, cold-start hold, retries.

The parts: `upstream.Upstream` (the pooled keep-alive session: forward and probe),
`coldstart.ColdStarts` (the per-model hold while a model starts), `status_writer.
StatusWriter` (demand and recency writes to the EmbeddingModel status). The router
decides what happens to one call:

- Warm: a ready pod of the model is in the registry -> forward the client's bytes;
  recency is noted in memory (flushed in the background).
- Cold: held by the model's shared waiter until a pod is ready (or 503/504).
- A pod that fails mid-request (connection error, reset, 503 draining/loading) is marked
  suspect and the call is retried once on another ready pod or after re-activation.
- A pod that answers 503 `overloaded` (its queue is full) is busy, not dead: it is not
  marked suspect and nothing is re-activated; the call is retried at once on a ready pod
  that has not said so yet, else after a back-off on the least loaded one, for up to
  `busy_retry_seconds`; then the 503 goes to the client with the server's Retry-After.
- A client that disconnects cancels its handler (the runner's `handler_cancellation`):
  its waiter slot is released and its upstream call is closed.
"""

from __future__ import annotations

import asyncio
import logging

from akidb_embed.api.errors import ApiError, Code
from akidb_embed.gateway.coldstart import ColdStarts
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.gateway.discovery import ClusterBackend
from akidb_embed.gateway.metrics import Metrics
from akidb_embed.gateway.registry import PodState, Registry
from akidb_embed.gateway.status_writer import StatusWriter
from akidb_embed.gateway.upstream import Busy, Retryable, Upstream, UpstreamReply

log = logging.getLogger("akidb_embed.gateway")

BUSY_BACKOFF_START = 0.02
BUSY_BACKOFF_MAX = 0.25

__all__ = ["Router", "UpstreamReply"]


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry,
        backend: ClusterBackend,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.upstream = Upstream(config, registry, metrics)
        self.status = StatusWriter(config, backend, metrics)
        self.cold = ColdStarts(config, registry, metrics, self.upstream, self.status)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.upstream.start()
        self.status.start()

    async def close(self) -> None:
        self.cold.close()
        await self.status.close()
        await self.upstream.close()

    # -- names -----------------------------------------------------------------------

    def resolve(self, name: str | None) -> str:
        """EmbeddingModel name for a requested model name (default when None)."""
        if not self.registry.synced:
            raise ApiError(
                Code.NOT_READY,
                "the gateway has not synced its model list yet; retry shortly",
                headers={"Retry-After": "1"},
            )
        wanted = name or self.config.default_model
        resolved = self.registry.resolve(wanted)
        if resolved is None:
            known = self.registry.known_models()
            raise ApiError(
                Code.MODEL_NOT_FOUND,
                f"unknown model {wanted!r}; known models: {', '.join(known) or '(none)'}",
                details={"known_models": known},
            )
        return resolved

    def last_request(self, model: str) -> float | None:
        return self.status.last_request(model)

    def waiting(self, model: str) -> int:
        return self.cold.waiting(model)

    async def flush_recency(self) -> None:
        await self.status.flush_recency()

    # -- the call -----------------------------------------------------------------------

    async def call(self, model: str, path: str, body: bytes) -> UpstreamReply:
        """Forward one (idempotent) model call (a JSON body) for `model`, holding it while cold."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.cold_start_timeout
        pod, waited = await self.cold.acquire(model, deadline)
        try:
            reply = await self._send_patiently(model, pod, path, body)
        except Retryable as first:
            self.registry.mark_suspect(pod.name)
            self.metrics.retries.labels(model).inc()
            log.warning("pod %s of %s failed (%s); retrying once", pod.name, model, first)
            # A re-activation gets a fresh cold-start budget.
            deadline = max(deadline, loop.time() + self.config.cold_start_timeout)
            pod, waited_again = await self.cold.acquire(model, deadline)
            if waited is not None or waited_again is not None:
                waited = (waited or 0.0) + (waited_again or 0.0)
            try:
                reply = await self._send_patiently(model, pod, path, body)
            except Retryable as second:
                self.registry.mark_suspect(pod.name)
                reply = second.final()
        if reply.status < 500:
            self.status.note_request(model)
        reply.cold_wait = waited
        return reply

    async def _send_patiently(
        self, model: str, pod: PodState, path: str, body: bytes
    ) -> UpstreamReply:
        """`send`, retrying while the pods of `model` are busy (503 overloaded): at once
        on a ready pod that has not said so yet, else after a back-off on the least
        loaded one; past `busy_retry_seconds` the last busy answer is the reply."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.busy_retry_seconds
        backoff = BUSY_BACKOFF_START
        busy_pods: set[str] = set()
        while True:
            try:
                return await self.upstream.send(model, pod, path, body)
            except Busy as busy:
                busy_pods.add(pod.name)
                other = self.registry.pick_ready(model, avoid=frozenset(busy_pods))
                if other is not None:
                    pod = other
                    continue
                if loop.time() + backoff > give_up:
                    busy.reply.headers.setdefault("Retry-After", "1")
                    return busy.reply
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BUSY_BACKOFF_MAX)
            busy_pods.clear()
            pod = self.registry.pick_ready(model) or pod
