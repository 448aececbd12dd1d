"""The chaos soak: Zipf traffic through the gateway while pods, the operator, a gateway
replica and the API server are taken away; the node never holds more than capacity.

On the real local cluster with the local overlay (capacity 3): six tiny random-weight BERT
models, >= 10,000 requests through the gateway's NodePort, arriving open-loop (Poisson at a
fixed rate, each request its own task, so a request waiting for a cold model does not slow
the others, as with independent clients), and, every few seconds, one fault: a model pod
deleted (graceful or forced), the operator pod deleted (graceful or forced), a gateway pod
deleted, and once the API server restarted.
An independent watcher lists the node's model pods every 200 ms.

Asserts: never more than capacity model pods bound to the node (Terminating included);
every request ends 200 or a clear 4xx/503/504 within its deadline, never a 500 or a
dropped connection; every model serves again within 30 s after the faults stop. Prints
the figures and writes them to bench/results/soak.json.

    pytest -m soak tests/operator/test_soak.py -s
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.operator.test_cluster import (  # noqa: F401  (the module's fixtures)
    CAPACITY,
    MODEL_SERVER,
    NS,
    Deployed,
    _lease_holder,
    _occupying,
    _operator_pods,
    _running_operators,
    deployed,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.soak]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "soak.json"
MODELS = [f"soak-{i}" for i in range(6)]
REQUESTS = int(os.environ.get("AKIDB_SOAK_REQUESTS", "10000"))
# Arrivals per second. Closed-loop clients (the first version: 12 of them) spend most of
# their time waiting for cold models at capacity 3 of 6, and sent 2,321 requests in 540 s
# on the two-core real node; open-loop arrivals at this rate send REQUESTS in ~400 s.
RATE = float(os.environ.get("AKIDB_SOAK_RATE", "25"))
# Traffic stops at REQUESTS or after this long, whichever is first (the whole test must
# fit CI); the figures say how many were sent.
TRAFFIC_SECONDS = float(os.environ.get("AKIDB_SOAK_SECONDS", "540"))
MIN_REQUESTS = 1000
MAX_IN_FLIGHT = 512  # beyond this the generator waits (and counts it) instead of piling on
FAULT_EVERY = 6.0  # seconds between faults
MIN_FAULT_SECONDS = 90.0
DEADLINE = 130.0  # the gateway's cold-start timeout (120 s) and some slack
ALLOWED = {503, 504}  # and any 4xx
GATEWAY = "app.kubernetes.io/name=akidb-gateway"


class PodSampler:
    """Lists the node's model pods every 200 ms (its own client, not a watch)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        self.api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        self.samples = 0
        self.failed = 0  # the API server did not answer (its restart)
        self.over: list[tuple[float, list[str]]] = []
        self.max_seen = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                items = self.api.list_namespaced_pod(
                    NS, label_selector=MODEL_SERVER, _request_timeout=(1, 2)
                ).items
                pods = [self.api.api_client.sanitize_for_serialization(p) for p in items]
                held = _occupying(pods)
                self.samples += 1
                self.max_seen = max(self.max_seen, len(held))
                if len(held) > CAPACITY:
                    self.over.append((time.time(), [p["metadata"]["name"] for p in held]))
            except Exception:
                self.failed += 1
            self.stop.wait(max(0.0, 0.2 - (time.monotonic() - started)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


class Traffic:
    def __init__(self, url: str, rng: random.Random) -> None:
        self.url = url
        self.rng = rng
        # Zipf over the six models (s = 1.1): soak-0 hot, soak-5 rare.
        weights = [1 / (i + 1) ** 1.1 for i in range(len(MODELS))]
        self.weights = weights
        self.codes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()  # non-200 answers: status, error type, message
        self.latencies: list[float] = []
        self.late: list[tuple[str, float]] = []
        self.errors: list[str] = []
        self.sent = 0
        self.stop_at = time.monotonic() + TRAFFIC_SECONDS
        self.max_in_flight = 0
        self.generator_waits = 0  # arrivals delayed because MAX_IN_FLIGHT were open

    async def one(self, http: aiohttp.ClientSession, model: str) -> int | None:
        body = {"model": model, "texts": [f"soak request {self.sent} for {model}"]}
        started = time.monotonic()
        try:
            async with http.post(f"{self.url}/api/v1/embed", json=body) as r:
                data = await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.errors.append(f"{model}: {type(exc).__name__}: {exc}")
            self.codes["error"] += 1
            return None
        took = time.monotonic() - started
        self.latencies.append(took)
        self.codes[str(status)] += 1
        if status != 200:
            self.reasons[f"{status} {_reason(data)}"] += 1
        if took > DEADLINE:
            self.late.append((model, took))
        return status

    async def open_loop(self, http: aiohttp.ClientSession, faults_done: asyncio.Event) -> None:
        """Poisson arrivals at RATE/s, each request its own task, until the faults are
        done and REQUESTS were sent (or TRAFFIC_SECONDS passed); then waits for all."""
        open_slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[int | None]] = set()
        next_at = time.monotonic()

        in_flight = 0

        async def request(model: str) -> int | None:
            nonlocal in_flight
            in_flight += 1
            self.max_in_flight = max(self.max_in_flight, in_flight)
            try:
                return await self.one(http, model)
            finally:
                in_flight -= 1
                open_slots.release()

        while not faults_done.is_set() or (
            self.sent < REQUESTS and time.monotonic() < self.stop_at
        ):
            # After a stall (the in-flight cap) arrivals resume at RATE, not in a burst.
            next_at = max(next_at, time.monotonic() - 1.0) + self.rng.expovariate(RATE)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if open_slots.locked():
                self.generator_waits += 1
            await open_slots.acquire()
            model = self.rng.choices(MODELS, self.weights)[0]
            self.sent += 1
            task = asyncio.create_task(request(model))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*list(tasks))


def _reason(data: bytes) -> str:
    """An error body's type and message, model names and numbers folded (to count kinds)."""
    try:
        error = json.loads(data)["error"]
        text = f"{error.get('type', '')}: {error.get('message', '')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = data[:120].decode(errors="replace")
    return re.sub(r"\d+(\.\d+)?", "N", text.replace("soak-", "model-"))[:160]


def _delete(stack: Deployed, pod: str, force: bool) -> None:
    args = ["delete", "pod", pod, "-n", NS, "--wait=false"]
    if force:
        args += ["--grace-period=0", "--force"]
    stack.kubectl(*args, check=False)


def _restart_apiserver(stack: Deployed) -> float:
    """Stop the API server process and bring it back (DevCluster.up starts what is
    missing); seconds until it answers again."""
    from akidb_embed.devcluster.cluster import ClusterError

    dev = stack.cluster.dev
    record = dev._record("kube-apiserver")
    assert record is not None and record.alive()
    started = time.monotonic()
    os.kill(record.pid, signal.SIGTERM)
    # Its graceful shutdown drains watches for up to a minute; a crash-like stop is the
    # fault wanted here, so after 5 s it is killed.
    stop_by = time.monotonic() + 5
    while record.alive() and time.monotonic() < stop_by:
        time.sleep(0.1)
    if record.alive():
        os.kill(record.pid, signal.SIGKILL)
        while record.alive():
            time.sleep(0.1)
    deadline = time.monotonic() + 60
    while True:  # the port may stay bound for a moment after the process is gone
        try:
            dev.up(progress=lambda _msg: None)
            return time.monotonic() - started
        except ClusterError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _failover(stack: Deployed, old: str, since: float) -> float | None:
    """Seconds from deleting leader `old` until another pod held the Lease."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            holder = _lease_holder(stack)
        except AssertionError:
            holder = ""
        if holder and holder != old:
            return time.monotonic() - since
        time.sleep(0.1)
    return None


def _faults(stack: Deployed, rng: random.Random, log: list[dict[str, Any]]) -> None:
    """One fault every FAULT_EVERY s for MIN_FAULT_SECONDS (the API server restart once)."""
    kinds = ["model-pod", "model-pod-forced", "operator", "operator-forced", "gateway"]
    plan = [rng.choice(kinds) for _ in range(int(MIN_FAULT_SECONDS / FAULT_EVERY))]
    plan[len(plan) // 2] = "apiserver"
    plan[1], plan[3] = "operator", "operator-forced"  # both kinds at least once
    for kind in plan:
        time.sleep(FAULT_EVERY)
        entry: dict[str, Any] = {"at": time.time(), "kind": kind}
        try:
            if kind.startswith("model-pod"):
                pods = [
                    p["metadata"]["name"]
                    for p in stack.model_pods()
                    if not p["metadata"].get("deletionTimestamp")
                ]
                if pods:
                    entry["pod"] = rng.choice(pods)
                    _delete(stack, entry["pod"], kind.endswith("forced"))
            elif kind.startswith("operator"):
                old = _lease_holder(stack)
                if old:
                    since = time.monotonic()
                    _delete(stack, old, kind.endswith("forced"))
                    entry["pod"] = old
                    entry["failover_s"] = _failover(stack, old, since)
            elif kind == "gateway":
                pods = stack.cluster.get_json("pods", "-n", NS, "-l", GATEWAY)["items"]
                live = [
                    p["metadata"]["name"]
                    for p in pods
                    if not p["metadata"].get("deletionTimestamp")
                ]
                if live:
                    entry["pod"] = rng.choice(live)
                    _delete(stack, entry["pod"], False)
            elif kind == "apiserver":
                entry["down_s"] = round(_restart_apiserver(stack), 2)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            entry["error"] = repr(exc)
        log.append(entry)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _recovery(url: str) -> dict[str, float | None]:
    """Seconds after the faults stop until each model answers 200 (None: not within 30 s).

    All models at once, as clients would: at capacity 3 half of them wait for evictions
    (the local overlay's minimum residency is 5 s) and cold starts.
    """
    started = time.monotonic()

    async def until_served(http: aiohttp.ClientSession, model: str) -> float | None:
        while (left := 30 - (time.monotonic() - started)) > 0:
            try:
                async with http.post(
                    f"{url}/api/v1/embed",
                    json={"model": model, "texts": ["back?"]},
                    timeout=aiohttp.ClientTimeout(total=left),
                ) as r:
                    await r.read()
                    if r.status == 200:
                        return round(time.monotonic() - started, 2)
            except (TimeoutError, aiohttp.ClientError):
                pass
            await asyncio.sleep(0.2)
        return None

    async with aiohttp.ClientSession() as http:
        times = await asyncio.gather(*(until_served(http, m) for m in MODELS))
    return dict(zip(MODELS, times, strict=True))


@pytest.mark.timeout(1200)
def test_chaos_soak(deployed: Deployed) -> None:  # noqa: F811 (the fixture)
    cluster = deployed.cluster
    for name in MODELS:
        deployed.create_tiny(name)
    for name in MODELS:
        deployed.wait_phase(name, "Standby", timeout=240)

    def gateways_ready() -> bool:
        pods = cluster.get_json("pods", "-n", NS, "-l", GATEWAY)["items"]
        return (
            sum(
                1
                for p in pods
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (p.get("status") or {}).get("conditions") or []
                )
            )
            >= 2
        )

    cluster.wait_for(gateways_ready, 120, "2 ready gateway replicas")
    svc = cluster.get_json("svc", "akidb-gateway", "-n", NS)
    url = f"http://{cluster.node_ip}:{svc['spec']['ports'][0]['nodePort']}"
    rng = random.Random(9)
    traffic = Traffic(url, rng)
    sampler = PodSampler(cluster.kubeconfig)
    faults: list[dict[str, Any]] = []
    started = time.monotonic()

    async def run() -> None:
        faults_done = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=DEADLINE + 10)
        connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            generator = asyncio.create_task(traffic.open_loop(http, faults_done))
            await asyncio.to_thread(_faults, deployed, random.Random(11), faults)
            faults_done.set()
            await generator

    try:
        asyncio.run(run())
        fault_end = time.monotonic()
        recovery = asyncio.run(_recovery(url))
    finally:
        sampler.close()
    failover_s: list[float | None] = [f.get("failover_s") for f in faults if "failover_s" in f]
    figures: dict[str, Any] = {
        "requests": traffic.sent,
        "arrival_rate_per_s": RATE,
        "max_in_flight": traffic.max_in_flight,
        "generator_waits": traffic.generator_waits,
        "codes": dict(traffic.codes),
        "error_kinds": dict(traffic.reasons.most_common(8)),
        "latency_s": {
            "p50": round(statistics.median(traffic.latencies), 3) if traffic.latencies else None,
            "p95": round(_percentile(traffic.latencies, 0.95), 3),
            "max": round(max(traffic.latencies, default=0.0), 3),
        },
        "duration_s": round(fault_end - started, 1),
        "pod_samples": sampler.samples,
        "pod_samples_failed": sampler.failed,
        "over_capacity_samples": len(sampler.over),
        "max_model_pods_seen": sampler.max_seen,
        "failover_s": failover_s,
        "faults": faults,
        "recovery_s": recovery,
        "errors": traffic.errors[:20],
        "late": traffic.late[:20],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print("\nsoak figures:", json.dumps({k: v for k, v in figures.items() if k != "faults"}))
    print("faults:", [(f["kind"], f.get("failover_s"), f.get("error")) for f in faults])

    assert traffic.sent >= min(REQUESTS, MIN_REQUESTS), traffic.sent
    assert not sampler.over, sampler.over[:5]
    assert sampler.samples > 0.5 * (fault_end - started) / 0.2  # the watcher really watched
    assert "500" not in traffic.codes, traffic.codes
    assert "error" not in traffic.codes, traffic.errors[:5]  # no dropped connection
    bad = {c for c in traffic.codes if c != "200" and c[0] != "4" and int(c) not in ALLOWED}
    assert not bad, (traffic.codes, traffic.errors[:5])
    assert not traffic.late, traffic.late[:5]
    failovers = [f for f in failover_s if f is not None]
    assert len(failovers) == len(failover_s) and failovers, faults
    assert max(failovers) <= 5.0, faults
    assert all(t is not None for t in recovery.values()), recovery
    assert any(f["kind"] == "apiserver" and "error" not in f for f in faults), faults
    operators = _running_operators(deployed)
    assert len(operators) == 2 and _lease_holder(deployed) in operators
    assert _operator_pods(deployed)
    deployed.delete_models(*MODELS)
