"""Cold path: demand marking, coalescing, caps, timeouts, fast probe, pod death."""

from __future__ import annotations

import asyncio
from typing import Any

from akidb_embed.gateway.registry import Registry
from tests.gateway.conftest import GatewayFactory, UpstreamFactory, state
from tests.gateway.fakes import FakeBackend, FakeUpstream, model_obj, pod_obj, vector


def activate_on_demand(
    backend: FakeBackend,
    upstream: UpstreamFactory,
    *,
    delay: float = 0.2,
    ready_via_watch: bool = True,
    tag: float = 9.0,
) -> list[FakeUpstream]:
    """Play the operator: on a demand mark, start a model server and report its pod."""
    started: list[FakeUpstream] = []

    async def activate(model: str, pod_name: str) -> None:
        await asyncio.sleep(delay)
        up = await upstream(tag=tag)
        started.append(up)
        registry: Registry = backend.registry  # type: ignore[assignment]
        registry.upsert_pod(pod_obj(pod_name, model, up.port, ready=ready_via_watch))

    async def on_patch(model: str, fields: dict[str, Any]) -> None:
        if "requestedAt" in fields:
            name = f"{model}-{len(backend.demand_patches(model))}"
            asyncio.get_running_loop().create_task(activate(model, name))

    backend.on_patch = on_patch
    return started


async def test_concurrent_requests_for_a_cold_model_coalesce_into_one_demand(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    backend = FakeBackend([model_obj("minilm", phase="Standby")])
    started = activate_on_demand(backend, upstream, delay=0.3)
    client = await gateway(backend)
    responses = await asyncio.gather(
        *(client.post("/api/v1/embed", json={"texts": [f"t{i}"]}) for i in range(20))
    )
    assert [r.status for r in responses] == [200] * 20
    assert len(backend.demand_patches("minilm")) == 1
    assert len(started) == 1 and len(started[0].calls) == 20
    for i, r in enumerate(responses):
        assert (await r.json())["embeddings"] == [vector(f"t{i}", 9.0)]
        assert float(r.headers["X-Akidb-Cold-Start"]) >= 0.25
        assert r.headers["X-Akidb-Pod"] == "minilm-1"
    metrics = await (await client.get("/metrics")).text()
    assert 'akidb_gateway_cold_starts_total{model="minilm"} 1.0' in metrics
    assert 'akidb_gateway_waiting_requests{model="minilm"} 0.0' in metrics
    # now warm: no new demand, no cold-start header
    r = await client.post("/api/v1/embed", json={"texts": ["again"]})
    assert r.status == 200 and "X-Akidb-Cold-Start" not in r.headers
    assert len(backend.demand_patches("minilm")) == 1


async def test_waiting_cap_is_503_with_retry_after_and_timeout_is_504(
    gateway: GatewayFactory,
) -> None:
    backend = FakeBackend([model_obj("minilm", phase="Standby")])  # never activates
    client = await gateway(backend, max_waiting_per_model=3, cold_start_timeout=0.8)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    held = [
        asyncio.create_task(client.post("/api/v1/embed", json={"texts": ["a"]})) for _ in range(3)
    ]
    while state(client).router.waiting("minilm") < 3:
        await asyncio.sleep(0.01)
    over = await client.post("/api/v1/embed", json={"texts": ["a"]})
    assert over.status == 503
    assert over.headers["Retry-After"] == "5"
    assert (await over.json())["error"]["code"] == "overloaded"
    assert loop.time() - t0 < 0.8  # refused at once, not held
    for resp in await asyncio.gather(*held):
        assert resp.status == 504
        err = (await resp.json())["error"]
        assert err["code"] == "cold_start_timeout"
        assert "Standby" in err["message"]
    assert len(backend.demand_patches("minilm")) == 1
    # every waiter left: the cold start was abandoned; a new request marks demand again
    assert state(client).router.waiting("minilm") == 0
    resp = await client.post("/api/v1/embed", json={"texts": ["a"]})
    assert resp.status == 504
    assert len(backend.demand_patches("minilm")) == 2


async def test_a_cold_model_does_not_delay_a_warm_one(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    backend = FakeBackend(
        [model_obj("minilm"), model_obj("qwen", phase="Standby")],
        [pod_obj("p", "minilm", up.port)],
    )
    client = await gateway(backend, cold_start_timeout=3.0)
    cold = [
        asyncio.create_task(client.post("/api/v1/embed", json={"model": "qwen", "texts": ["q"]}))
        for _ in range(10)
    ]
    while state(client).router.waiting("qwen") < 10:
        await asyncio.sleep(0.01)
    warm = await asyncio.gather(
        *(client.post("/api/v1/embed", json={"texts": [str(i)]}) for i in range(50))
    )
    assert [r.status for r in warm] == [200] * 50
    # all warm traffic finished while every cold request is still held
    assert not any(t.done() for t in cold)
    assert state(client).router.waiting("qwen") == 10
    for t in cold:
        t.cancel()
    await asyncio.gather(*cold, return_exceptions=True)


async def test_model_failing_while_waiting_answers_waiters(gateway: GatewayFactory) -> None:
    backend = FakeBackend([model_obj("minilm", phase="Activating")])
    client = await gateway(backend, cold_start_timeout=5.0)
    held = [
        asyncio.create_task(client.post("/api/v1/embed", json={"texts": ["a"]})) for _ in range(3)
    ]
    while state(client).router.waiting("minilm") < 3:
        await asyncio.sleep(0.01)
    assert backend.registry is not None
    backend.registry.upsert_model(
        model_obj("minilm", phase="Failed", message="engine build failed: out of memory")
    )
    for resp in await asyncio.gather(*held):
        assert resp.status == 503
        err = (await resp.json())["error"]
        assert err["code"] == "model_failed" and "out of memory" in err["message"]


async def test_running_pod_is_probed_and_used_before_the_kubelet_says_ready(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    backend = FakeBackend([model_obj("minilm", phase="Standby")])
    started = activate_on_demand(backend, upstream, delay=0.1, ready_via_watch=False)
    client = await gateway(backend, probe_interval=0.05)
    resp = await client.post("/api/v1/embed", json={"texts": ["a"]})
    assert resp.status == 200
    assert resp.headers["X-Akidb-Pod"] == "minilm-1"
    assert started[0].probes >= 1
    # the watch never reported Ready; the pod stays in use from the probe
    resp = await client.post("/api/v1/embed", json={"texts": ["b"]})
    assert resp.status == 200 and "X-Akidb-Cold-Start" not in resp.headers


async def test_not_ready_pod_is_not_used_until_its_readyz_answers(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream(ready=False)
    backend = FakeBackend(
        [model_obj("minilm", phase="Activating")], [pod_obj("p", "minilm", up.port, ready=False)]
    )
    client = await gateway(backend, probe_interval=0.05)
    task = asyncio.create_task(client.post("/api/v1/embed", json={"texts": ["a"]}))
    while up.probes < 3:
        await asyncio.sleep(0.02)
    assert not task.done() and not up.calls
    up.ready = True
    resp = await task
    assert resp.status == 200 and float(resp.headers["X-Akidb-Cold-Start"]) > 0


async def test_pod_reset_mid_request_is_retried_on_another_pod(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    dying, healthy = await upstream(mode="reset", tag=1.0), await upstream(tag=2.0)
    backend = FakeBackend(
        [model_obj("minilm")],
        [pod_obj("a", "minilm", dying.port), pod_obj("b", "minilm", healthy.port)],
    )
    client = await gateway(backend)
    resp = await client.post("/api/v1/embed", json={"texts": ["x"]})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Akidb-Pod"] == "b"
    assert (await resp.json())["embeddings"] == [vector("x", 2.0)]
    assert len(dying.calls) == 1 and len(healthy.calls) == 1
    # the dead pod is left alone afterwards
    for _ in range(5):
        assert (await client.post("/api/v1/embed", json={"texts": ["y"]})).status == 200
    assert len(dying.calls) == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'akidb_gateway_retries_total{model="minilm"} 1.0' in metrics
    assert 'akidb_gateway_upstream_errors_total{kind="connect",model="minilm"} 1.0' in metrics


async def test_draining_503_is_retried_on_another_pod(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    draining, healthy = await upstream(mode="503"), await upstream(tag=2.0)
    backend = FakeBackend(
        [model_obj("minilm")],
        [pod_obj("a", "minilm", draining.port), pod_obj("b", "minilm", healthy.port)],
    )
    client = await gateway(backend)
    resp = await client.post("/v1/embeddings", json={"input": "x"})
    assert resp.status == 200
    assert resp.headers["X-Akidb-Pod"] == "b"
    assert len(draining.calls) == 1


async def test_only_pod_dies_and_request_waits_for_reactivation(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    dying = await upstream(mode="reset")
    backend = FakeBackend([model_obj("minilm")], [pod_obj("old", "minilm", dying.port)])
    activate_on_demand(backend, upstream, delay=0.2, tag=5.0)
    client = await gateway(backend)
    assert backend.registry is not None
    resp = await client.post("/api/v1/embed", json={"texts": ["x"]})
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-Akidb-Pod"] == "minilm-1"
    assert float(resp.headers["X-Akidb-Cold-Start"]) >= 0.15
    assert (await resp.json())["embeddings"] == [vector("x", 5.0)]
    assert len(backend.demand_patches("minilm")) == 1


async def test_second_failure_is_a_clear_502_not_a_hang(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    a, b = await upstream(mode="reset"), await upstream(mode="reset")
    backend = FakeBackend(
        [model_obj("minilm")], [pod_obj("a", "minilm", a.port), pod_obj("b", "minilm", b.port)]
    )
    client = await gateway(backend)
    resp = await client.post("/api/v1/embed", json={"texts": ["x"]})
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    assert len(a.calls) + len(b.calls) == 2  # exactly one retry


async def test_terminating_and_unready_pods_are_skipped(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    old, new = await upstream(tag=1.0), await upstream(tag=2.0)
    backend = FakeBackend(
        [model_obj("minilm")],
        [
            pod_obj("old", "minilm", old.port, terminating=True),
            pod_obj("pending", "minilm", None, ip=None, ready=False, phase="Pending"),
            pod_obj("new", "minilm", new.port),
        ],
    )
    client = await gateway(backend)
    for _ in range(3):
        resp = await client.post("/api/v1/embed", json={"texts": ["x"]})
        assert resp.headers["X-Akidb-Pod"] == "new"
    assert not old.calls
