"""Issue 9 item 6: the gateway under the faults a real node sees.

A busy pod is not a dead pod; a client that leaves frees what it held; recency only
moves forward and is flushed only once written; IPv6 pod IPs; stale watches make the
gateway not ready; deeply nested JSON is a 400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from akidb_embed.gateway.app import GATEWAY, Gateway, create_app, make_runner
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.k8s import to_rfc3339
from akidb_embed.model_server.runner import free_port
from tests.gateway.conftest import GatewayFactory, UpstreamFactory, state
from tests.gateway.fakes import FakeBackend, model_obj, pod_obj, vector


async def test_overloaded_pod_is_retried_not_marked_suspect_nor_reactivated(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    busy = await upstream(mode="overloaded", tag=1.0)
    backend = FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", busy.port)])
    client = await gateway(backend, busy_retry_seconds=2.0)

    async def queue_drains() -> None:
        await asyncio.sleep(0.15)
        busy.mode = "ok"

    drain = asyncio.create_task(queue_drains())
    resp = await client.post("/api/v1/embed", json={"texts": ["x"]})
    await drain
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["embeddings"] == [vector("x", 1.0)]
    assert len(busy.calls) >= 2  # retried on the same (only) pod after backing off
    assert backend.demand_patches() == []  # a busy pod does not re-activate the model
    assert [p.name for p in state(client).registry.ready_pods("minilm")] == ["p"]
    metrics = await (await client.get("/metrics")).text()
    assert 'akidb_gateway_retries_total{model="minilm"}' not in metrics
    assert 'kind="overloaded",model="minilm"' in metrics


async def test_overloaded_past_the_retry_budget_is_503_with_retry_after(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    busy = await upstream(mode="overloaded")
    backend = FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", busy.port)])
    client = await gateway(backend, busy_retry_seconds=0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await client.post("/api/v1/embed", json={"texts": ["x"]})
    took = loop.time() - t0
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "overloaded"
    assert 0.1 <= took < 2.0  # backed off within its budget, then answered
    assert backend.demand_patches() == []
    assert [p.name for p in state(client).registry.ready_pods("minilm")] == ["p"]
    # The pod is still in use: once it has room, the next call goes straight to it.
    busy.mode = "ok"
    resp = await client.post("/api/v1/embed", json={"texts": ["y"]})
    assert resp.status == 200 and resp.headers["X-Akidb-Pod"] == "p"


async def test_overloaded_pod_sends_the_retry_to_a_less_loaded_one(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    busy, free = await upstream(mode="overloaded", tag=1.0), await upstream(tag=2.0)
    backend = FakeBackend(
        [model_obj("minilm")],
        [pod_obj("a", "minilm", busy.port), pod_obj("b", "minilm", free.port)],
    )
    client = await gateway(backend)
    for _ in range(4):
        resp = await client.post("/api/v1/embed", json={"texts": ["x"]})
        assert resp.status == 200
    assert backend.demand_patches() == []
    assert {p.name for p in state(client).registry.ready_pods("minilm")} == {"a", "b"}


@pytest.fixture
async def served() -> AsyncIterator[Any]:
    """serve(backend, **config) -> (url, gateway state): the gateway on a real port, run
    by the runner `serve` uses (with its handler cancellation)."""
    runners: list[web.AppRunner] = []

    async def start(backend: FakeBackend, **overrides: Any) -> tuple[str, Gateway]:
        port = free_port()
        config = dataclasses.replace(
            GatewayConfig(host="127.0.0.1", port=port, default_model="minilm"), **overrides
        )
        app = create_app(config, backend)
        runner = make_runner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await backend.started.wait()
        return f"http://127.0.0.1:{port}", app[GATEWAY]

    yield start
    for runner in runners:
        await runner.cleanup()


async def _until(check: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _abandon(url: str, body: dict[str, Any], after: float) -> None:
    """Send a request and hang up after `after` seconds."""
    timeout = aiohttp.ClientTimeout(total=after)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises(TimeoutError):
            async with http.post(url + "/api/v1/embed", json=body) as resp:
                await resp.read()


async def test_client_disconnect_releases_its_waiter_slot(served: Any) -> None:
    backend = FakeBackend([model_obj("minilm", phase="Standby")])  # never activates
    url, gw = await served(backend, max_waiting_per_model=1, cold_start_timeout=30.0)
    await _abandon(url, {"texts": ["a"]}, after=0.3)
    await _until(lambda: gw.router.waiting("minilm") == 0, 2.0, "the waiter slot back")
    await _until(lambda: not gw.router.cold.active(), 2.0, "the abandoned cold start to stop")
    # The one slot is free again: a new request is held (not refused 503 overloaded).
    async with aiohttp.ClientSession() as http:
        task = asyncio.create_task(http.post(url + "/api/v1/embed", json={"texts": ["b"]}))
        await _until(lambda: gw.router.waiting("minilm") == 1, 2.0, "the new waiter")
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    text = gw.metrics.render().decode()
    assert 'akidb_gateway_requests_total{api="embed",model="minilm",status="499"}' in text
    assert 'status="500"' not in text


async def test_client_disconnect_cancels_the_upstream_call(
    served: Any, upstream: UpstreamFactory
) -> None:
    slow = await upstream(delay=5.0)
    backend = FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", slow.port)])
    url, gw = await served(backend)
    await _abandon(url, {"texts": ["a"]}, after=0.3)
    await _until(lambda: slow.cancelled == 1, 2.0, "the model server to see the hang-up")
    assert gw.registry.in_flight("p") == 0


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_pod_ip(gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(host="::1", tag=6.0)
    backend = FakeBackend([model_obj("minilm")], [pod_obj("p6", "minilm", up.port, ip="::1")])
    client = await gateway(backend)
    resp = await client.post("/api/v1/embed", json={"texts": ["v6"]})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["embeddings"] == [vector("v6", 6.0)]
    assert state(client).registry.pick_ready("minilm").base_url == (  # type: ignore[union-attr]
        f"http://[::1]:{up.port}"
    )


async def test_recency_is_marked_flushed_only_after_the_write_succeeds(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    backend = FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)])
    failures = 1

    async def flaky(model: str, fields: dict[str, Any]) -> None:
        nonlocal failures
        if "lastRequestTime" in fields and failures:
            failures -= 1
            raise ConnectionError("API server unreachable")

    backend.on_patch = flaky
    client = await gateway(backend, recency_flush_interval=3600)  # flushed by hand here
    assert (await client.post("/api/v1/embed", json={"texts": ["a"]})).status == 200
    router = state(client).router
    await router.flush_recency()
    assert backend.recency_patches() == []  # the write failed...
    await router.flush_recency()  # ...so the next flush writes the same time again
    used = router.last_request("minilm")
    assert used is not None
    assert backend.recency_patches("minilm") == [{"lastRequestTime": to_rfc3339(used)}]
    await router.flush_recency()
    assert len(backend.recency_patches("minilm")) == 1  # done: nothing new to write


async def test_two_replicas_never_move_recency_backwards(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    backend = FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)])
    first = await gateway(backend, recency_flush_interval=3600)
    second = await gateway(backend, recency_flush_interval=3600)
    assert (await second.post("/api/v1/embed", json={"texts": ["early"]})).status == 200
    await asyncio.sleep(0.02)
    assert (await first.post("/api/v1/embed", json={"texts": ["late"]})).status == 200
    late = state(first).router.last_request("minilm")
    await state(first).router.flush_recency()
    await state(second).router.flush_recency()  # the older time, flushed later
    assert backend.status["minilm"]["lastRequestTime"] == to_rfc3339(late)  # type: ignore[arg-type]


async def test_readyz_is_503_while_watches_are_stale_and_ready_when_they_recover(
    gateway: GatewayFactory,
) -> None:
    backend = FakeBackend([model_obj("minilm")])
    client = await gateway(backend, watch_stale_after=0.3)
    assert (await client.get("/readyz")).status == 200
    await asyncio.sleep(0.4)  # no event, bookmark or list since
    resp = await client.get("/readyz")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    body = await resp.json()
    assert body["stale_watches"] == ["models", "pods"]
    registry = state(client).registry
    registry.note_alive("models")
    assert (await (await client.get("/readyz")).json())["stale_watches"] == ["pods"]
    registry.note_alive("pods")
    assert (await client.get("/readyz")).status == 200


@pytest.mark.parametrize("depth", [1025, 200_000, 1_000_000])  # 1M: near the body limit
async def test_deeply_nested_json_is_a_clear_400(
    gateway: GatewayFactory, upstream: UpstreamFactory, depth: int
) -> None:
    up = await upstream()
    client = await gateway(FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)]))
    for body in (
        b'{"texts": ["a"], "x": ' + b"[" * depth + b"]" * depth + b"}",
        b'{"texts": ["a"], "dimensions": 2.0, "x": '
        + b'{"a":' * depth
        + b"1"
        + b"}" * depth
        + b"}",
        b'{"texts": ' + b"[" * depth + b"]" * depth + b"}",
    ):
        resp = await client.post(
            "/api/v1/embed", data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400, await resp.text()
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert not up.calls


async def test_forwarding_reuses_keep_alive_connections_and_the_clients_bytes(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    client = await gateway(FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)]))
    raw = b'{"texts":  ["a"],\n "normalize": true}'  # odd spacing: not re-encoded
    for _ in range(20):
        resp = await client.post(
            "/api/v1/embed", data=raw, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 200
    assert up.raw == [raw] * 20  # the client's bytes, as they came
    assert len(up.peers) == 1  # one pooled connection served all 20 sequential calls
