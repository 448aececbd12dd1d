"""Gateway against a fake discovery source and real HTTP upstreams (no Kubernetes)."""

from __future__ import annotations

import asyncio

import openai
import pytest

from akidb_embed.gateway.registry import FAILED
from tests.gateway.conftest import GatewayFactory, UpstreamFactory
from tests.gateway.fakes import FakeBackend, model_obj, pod_obj, vector


async def test_warm_request_routes_to_the_models_pod(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    a, b = await upstream(tag=1.0), await upstream(tag=2.0)
    backend = FakeBackend(
        [model_obj("minilm"), model_obj("bge")],
        [pod_obj("minilm-0", "minilm", a.port), pod_obj("bge-0", "bge", b.port)],
    )
    client = await gateway(backend)
    resp = await client.post("/api/v1/embed", json={"model": "bge", "texts": ["hi", "there"]})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "bge"  # the resource name, not the server's own
    assert body["embeddings"] == [vector("hi", 2.0), vector("there", 2.0)]
    assert body["dimension"] == 4 and body["usage"]["total_tokens"] == 2
    assert resp.headers["X-Akidb-Pod"] == "bge-0"
    assert "X-Akidb-Cold-Start" not in resp.headers
    assert len(b.calls) == 1 and not a.calls
    # the client's body is forwarded as it is
    assert b.calls[0] == {"model": "bge", "texts": ["hi", "there"]}
    assert resp.headers["X-Akidb-Model"] == "bge" and resp.headers["X-Akidb-Model-Match"] == "name"
    # options are passed through to the model server
    resp = await client.post(
        "/api/v1/embed",
        json={"texts": ["x"], "normalize": False, "dimensions": 2, "input_type": "query"},
    )
    assert resp.status == 200
    assert (await resp.json())["embeddings"] == [vector("x", 1.0)[:2]]
    assert a.calls[-1] == {
        "texts": ["x"],
        "normalize": False,
        "dimensions": 2,
        "input_type": "query",
    }
    # warm requests mark no demand
    assert backend.demand_patches() == []
    metrics = await (await client.get("/metrics")).text()
    assert 'akidb_gateway_requests_total{api="embed",model="bge",status="200"} 1.0' in metrics


async def test_default_model_and_catalog_alias(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream(tag=3.0)
    backend = FakeBackend(
        [model_obj("all-minilm-l6-v2")], [pod_obj("m-0", "all-minilm-l6-v2", up.port)]
    )
    client = await gateway(backend, default_model="all-minilm-l6-v2")
    for name, match in (
        (None, "default"),
        ("all-MiniLM-L6-v2", "name"),
        ("sentence-transformers/all-MiniLM-L6-v2", "repo-id"),
    ):
        payload: dict = {"texts": ["a"]}
        if name:
            payload["model"] = name
        resp = await client.post("/api/v1/embed", json=payload)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["model"] == "all-minilm-l6-v2"
        assert resp.headers["X-Akidb-Model-Match"] == match
    assert len(up.calls) == 3


async def test_unknown_model_is_404_listing_known(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    backend = FakeBackend([model_obj("minilm"), model_obj("bge")])
    client = await gateway(backend)
    resp = await client.post("/api/v1/embed", json={"model": "nope", "texts": ["a"]})
    assert resp.status == 404
    err = (await resp.json())["error"]
    assert err["type"] == "not_found_error" and err["code"] == "model_not_found"
    assert "bge" in err["message"] and "minilm" in err["message"]
    assert err["known_models"] == ["bge", "minilm"]
    resp = await client.post("/v1/embeddings", json={"model": "nope", "input": "a"})
    assert resp.status == 404
    assert backend.demand_patches() == []


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/api/v1/embed", b"", "empty"),
        ("/api/v1/embed", b"{not json", "not valid JSON"),
        ("/api/v1/embed", b"[1, 2]", "JSON object"),
        ("/api/v1/embed", b'{"texts": "one"}', "Expected `array`, got `str`"),
        ("/api/v1/embed", b'{"texts": []}', "length >= 1"),
        ("/api/v1/embed", b'{"texts": [""]}', "length >= 1 - at `$.texts[0]`"),
        ("/api/v1/embed", b'{"model": "minilm"}', "missing required field `texts`"),
        ("/api/v1/embed", b'{"texts": ["a", 3]}', "texts[1]"),
        ("/api/v1/embed", b'{"texts": ["a"], "dimensions": -1}', "dimensions"),
        ("/api/v1/embed", b'{"texts": ["a"], "dimensions": true}', "dimensions"),
        ("/api/v1/embed", b'{"texts": ["a"], "normalize": "yes"}', "normalize"),
        ("/api/v1/embed", b'{"texts": ["a"], "input_type": "passage"}', "input_type"),
        ("/api/v1/embed", b'{"text": ["a"]}', "unknown field"),
        ("/api/v1/embed", b'{"texts": ["a"], "model": 5}', "model"),
        ("/api/v1/embed", b'{"texts": ["a"], "x": ' + b"[" * 9000 + b"]" * 9000 + b"}", "x"),
        ("/v1/embeddings", b'{"model": "minilm"}', "missing required field `input`"),
        ("/v1/embeddings", b'{"input": ["a", [1, 2]]}', "mixes"),
        ("/v1/embeddings", b'{"input": []}', "is empty"),
        ("/v1/embeddings", b'{"input": "a", "encoding_format": "f16"}', "encoding_format"),
        ("/v1/embeddings", b'{"input": "a", "dimensions": 0}', "dimensions"),
        ("/v1/embeddings", b'{"input": "a", "z": ' + b"[" * 9000 + b"]" * 9000 + b"}", "deeply"),
        ("/embed", b'{"inputs": []}', "length >= 1"),
        ("/rerank", b'{"query": "q"}', "missing required field `texts`"),
        ("/v1/rerank", b'{"query": "q", "documents": [], "model": "r"}', "length >= 1"),
    ],
)
async def test_bad_input_is_a_clear_400(
    gateway: GatewayFactory, upstream: UpstreamFactory, path: str, body: bytes, needle: str
) -> None:
    up = await upstream()
    client = await gateway(FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)]))
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400, await resp.text()
    err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error"
    assert needle in err["message"]
    assert not up.calls


async def test_size_limit_method_and_route_errors_are_json(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    client = await gateway(
        FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)]),
        max_body_bytes=1000,
    )
    resp = await client.post("/api/v1/embed", json={"texts": ["x" * 2000]})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    resp = await client.get("/api/v1/embed")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]
    resp = await client.get("/api/v2/whatever")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "route_not_found"
    assert not up.calls


async def test_upstream_4xx_passes_through(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    backend = FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)])
    client = await gateway(backend)
    resp = await client.post("/api/v1/embed", json={"texts": ["ok", "bad"]})
    assert resp.status == 400
    assert (await resp.json()) == {
        "error": {"type": "invalid_request_error", "message": "text 'bad' refused"}
    }
    resp = await client.post("/api/v1/embed", json={"texts": ["ok"], "dimensions": 99})
    assert resp.status == 400
    assert "dimensions" in (await resp.json())["error"]["message"]
    assert len(up.calls) == 2  # not retried


async def test_failed_model_is_503_with_status_message(gateway: GatewayFactory) -> None:
    backend = FakeBackend([model_obj("minilm", phase=FAILED, message="conversion failed: OOM")])
    client = await gateway(backend)
    resp = await client.post("/api/v1/embed", json={"texts": ["a"]})
    assert resp.status == 503
    err = (await resp.json())["error"]
    assert err["code"] == "model_failed"
    assert "conversion failed: OOM" in err["message"]


async def test_models_endpoints(gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    minilm = model_obj("minilm")
    minilm["status"].update(
        {
            "lastRequestTime": "2025-01-02T03:04:05Z",
            "performance": {"p50Ms": 1.5, "p95Ms": 3.0, "textsPerSecond": 900, "device": "cpu"},
        }
    )
    backend = FakeBackend(
        [minilm, model_obj("qwen", phase="Standby", matryoshkaDimensions=[2, 4])],
        [pod_obj("p", "minilm", up.port)],
    )
    client = await gateway(backend)
    body = await (await client.get("/api/v1/models")).json()
    assert body["default_model"] == "minilm"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"minilm", "qwen"}
    assert by_name["minilm"]["phase"] == "Ready" and by_name["minilm"]["ready_pods"] == 1
    assert by_name["minilm"]["default"] is True
    assert by_name["minilm"]["performance"]["p95Ms"] == 3.0
    assert by_name["minilm"]["last_request_time"].startswith("2025-01-02T03:04:05")
    assert by_name["qwen"]["phase"] == "Standby" and by_name["qwen"]["ready_pods"] == 0
    assert by_name["qwen"]["matryoshka_dimensions"] == [2, 4]
    openai_list = await (await client.get("/v1/models")).json()
    assert openai_list["object"] == "list"
    assert sorted(m["id"] for m in openai_list["data"]) == ["minilm", "qwen"]
    doc = await (await client.get("/openapi.json")).json()
    assert {"/api/v1/embed", "/v1/embeddings", "/api/v1/models", "/v1/models"} <= set(doc["paths"])


async def test_readyz_waits_for_sync(gateway: GatewayFactory) -> None:
    backend = FakeBackend([model_obj("minilm")], sync=False)
    client = await gateway(backend)
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    resp = await client.post("/api/v1/embed", json={"texts": ["a"]})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["code"] == "not_ready"
    assert backend.registry is not None
    backend.registry.replace_models([model_obj("minilm")])
    backend.registry.mark_synced("models")
    backend.registry.mark_synced("pods")
    assert (await client.get("/readyz")).status == 200


async def test_api_keys(gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream()
    client = await gateway(
        FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)]),
        api_keys=frozenset({"k-one", "k-two"}),
    )
    resp = await client.post("/api/v1/embed", json={"texts": ["a"]})
    assert resp.status == 401
    err = (await resp.json())["error"]
    assert err["type"] == "authentication_error" and err["code"] == "missing_api_key"
    resp = await client.post(
        "/api/v1/embed", json={"texts": ["a"]}, headers={"Authorization": "Bearer wrong"}
    )
    assert resp.status == 401
    resp = await client.get("/v1/models", headers={"Authorization": "Basic k-one"})
    assert resp.status == 401
    for key in ("k-one", "k-two"):
        resp = await client.post(
            "/api/v1/embed", json={"texts": ["a"]}, headers={"Authorization": f"Bearer {key}"}
        )
        assert resp.status == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status == 200
    assert len(up.calls) == 2


async def test_openai_client(gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(tag=7.0)
    client = await gateway(
        FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)]),
        api_keys=frozenset({"sk-test"}),
    )
    oai = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-test", max_retries=0)
    try:
        # default encoding_format of the client is base64: decoded by the client
        result = await oai.embeddings.create(model="minilm", input=["hello", "abc"])
        assert result.model == "minilm"
        assert [d.embedding for d in result.data] == [vector("hello", 7.0), vector("abc", 7.0)]
        result = await oai.embeddings.create(
            model="minilm", input="xy", encoding_format="float", dimensions=2
        )
        assert result.data[0].embedding == vector("xy", 7.0)[:2]
        # the client's body goes to the model server as it is
        assert up.calls[-1] == {
            "input": "xy",
            "model": "minilm",
            "encoding_format": "float",
            "dimensions": 2,
        }
        models = await oai.models.list()
        assert [m.id for m in models.data] == ["minilm"]
        with pytest.raises(openai.NotFoundError) as info:
            await oai.embeddings.create(model="missing", input="x")
        assert "known models: minilm" in str(info.value)
        bad = openai.AsyncOpenAI(
            base_url=str(client.make_url("/v1")), api_key="sk-wrong", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            await bad.embeddings.create(model="minilm", input="x")
        await bad.close()
    finally:
        await oai.close()


async def test_upstream_timeout_is_504(gateway: GatewayFactory, upstream: UpstreamFactory) -> None:
    up = await upstream(delay=2.0)
    client = await gateway(
        FakeBackend([model_obj("minilm")], [pod_obj("p", "minilm", up.port)]),
        upstream_timeout=0.3,
    )
    resp = await client.post("/api/v1/embed", json={"texts": ["a"]})
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"
    assert len(up.calls) == 1  # a timeout is not retried


async def test_recency_flush_is_throttled(
    gateway: GatewayFactory, upstream: UpstreamFactory
) -> None:
    up = await upstream()
    backend = FakeBackend(
        [model_obj("minilm"), model_obj("bge")],
        [pod_obj("p", "minilm", up.port), pod_obj("q", "bge", up.port)],
    )
    client = await gateway(backend, recency_flush_interval=0.3)
    for _ in range(20):
        assert (await client.post("/api/v1/embed", json={"texts": ["a"]})).status == 200
        await asyncio.sleep(0.04)  # ~0.8 s of traffic
    await asyncio.sleep(0.4)
    patches = backend.recency_patches("minilm")
    assert 1 <= len(patches) <= 4, patches  # ~0.8 s / 0.3 s, not one per request
    assert backend.recency_patches("bge") == []  # an unused model is not touched
    times = [p["lastRequestTime"] for p in patches]
    assert times == sorted(times) and len(set(times)) == len(times)
    await asyncio.sleep(0.4)
    assert len(backend.recency_patches("minilm")) == len(patches)  # nothing new: no patch
    assert all(set(f) == {"lastRequestTime"} for _, f in backend.patches)
    models = await (await client.get("/api/v1/models")).json()
    assert models["models"][1]["name"] == "minilm"
    assert models["models"][1]["last_request_time"] is not None
