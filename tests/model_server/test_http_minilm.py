"""The real MiniLM artifact served over HTTP (in-process aiohttp app, real clients)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import openai
import pytest

from akidb_embed.api.encoding import from_base64 as decode_base64
from akidb_embed.model_server.app import ModelServer, ServerSettings, create_app
from akidb_embed.model_server.engine import Engine
from akidb_embed.model_server.runner import ServerThread

pytestmark = pytest.mark.slow

TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "hi",
    "The new movie is awesome, and the soundtrack, which was composed over three years by a "
    "small team of musicians working in a converted barn, is even better than the film.",
    "Embeddings map text to vectors so that similar meanings land close together.",
    "naïve café — ünïcödé 日本語のテキスト 🚀",
]


@pytest.fixture(scope="module")
def engine(minilm_artifact: Path) -> Engine:
    e = Engine(minilm_artifact, providers="CPU", threads=2)
    e.warmup()
    return e


@pytest.fixture(scope="module")
def st_reference(minilm_checkpoint: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_checkpoint), device="cpu")
    return np.asarray(model.encode(TEXTS, normalize_embeddings=True))


def make_client(aiohttp_client, engine: Engine, **settings):  # type: ignore[no-untyped-def]
    async def factory():  # type: ignore[no-untyped-def]
        server = ModelServer(ServerSettings(**settings), engine=engine)
        client = await aiohttp_client(create_app(server))
        await asyncio.wait_for(server.loaded.wait(), 30)
        client.model_server = server
        return client

    return factory()


@pytest.fixture
async def client(aiohttp_client, engine: Engine) -> AsyncIterator:  # type: ignore[no-untyped-def]
    yield await make_client(aiohttp_client, engine, max_texts_per_request=64, max_body_bytes=65536)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


async def test_embed_matches_sentence_transformers(client, st_reference: np.ndarray) -> None:
    resp = await client.post("/embed", json={"texts": TEXTS})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "all-minilm-l6-v2"
    assert body["dimension"] == 384
    got = np.asarray(body["embeddings"], dtype=np.float32)
    assert got.shape == (len(TEXTS), 384)
    cos = (got * st_reference).sum(axis=1)
    assert cos.min() >= 0.999, cos
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(TEXTS) * 2


async def test_openai_route_matches_native(client) -> None:
    native = await (await client.post("/embed", json={"texts": TEXTS[:3]})).json()
    resp = await client.post(
        "/v1/embeddings", json={"input": TEXTS[:3], "model": "all-minilm-l6-v2", "user": "u1"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list" and body["model"] == "all-minilm-l6-v2"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    np.testing.assert_allclose(
        [d["embedding"] for d in body["data"]], native["embeddings"], atol=1e-6
    )
    b64 = await (
        await client.post("/v1/embeddings", json={"input": "hi", "encoding_format": "base64"})
    ).json()
    vec = decode_base64(b64["data"][0]["embedding"])
    np.testing.assert_allclose(vec, native["embeddings"][2], atol=1e-6)


async def test_normalize_false_and_full_dimensions(client) -> None:
    full = await (await client.post("/embed", json={"texts": TEXTS[:2]})).json()
    same = await (await client.post("/embed", json={"texts": TEXTS[:2], "dimensions": 384})).json()
    np.testing.assert_allclose(same["embeddings"], full["embeddings"], atol=1e-6)
    raw = await (await client.post("/embed", json={"texts": TEXTS[:2], "normalize": False})).json()
    raw_v = np.asarray(raw["embeddings"])
    assert np.all(np.abs(np.linalg.norm(raw_v, axis=1) - 1) > 1e-3)
    np.testing.assert_allclose(
        raw_v / np.linalg.norm(raw_v, axis=1, keepdims=True), full["embeddings"], atol=1e-5
    )


async def test_truncation_default_and_refusal(client) -> None:
    long_text = "word " * 600
    ok = await client.post("/embed", json={"texts": [long_text]})
    assert ok.status == 200
    assert (await ok.json())["usage"]["prompt_tokens"] == 256
    refused = await client.post("/embed", json={"texts": ["short", long_text], "truncate": False})
    assert refused.status == 400
    err = (await refused.json())["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "text_too_long"
    assert "text 1 has 602 tokens" in err["message"] and "limit of 256" in err["message"]


async def test_concurrent_requests_batch_and_match_one_by_one(aiohttp_client, engine) -> None:
    client = await make_client(aiohttp_client, engine, max_batch_size=32)
    texts = [f"{TEXTS[i % len(TEXTS)]} (variant {i})" for i in range(32)]
    singles = []
    for t in texts:  # one by one: each request is its own batch
        singles.append(await (await client.post("/embed", json={"texts": [t]})).json())
    metrics_before = await (await client.get("/metrics")).text()
    runs_before = _metric(metrics_before, "akidb_model_server_batch_size_count")
    assert runs_before == 32

    async def one(t: str) -> list[float]:
        resp = await client.post("/embed", json={"texts": [t]})
        assert resp.status == 200
        return (await resp.json())["embeddings"][0]

    together = await asyncio.gather(*(one(t) for t in texts))
    metrics = await (await client.get("/metrics")).text()
    runs = _metric(metrics, "akidb_model_server_batch_size_count") - runs_before
    texts_run = _metric(metrics, "akidb_model_server_batch_size_sum") - 32
    assert texts_run == 32
    assert runs < 32, "concurrent requests were not coalesced into batches"
    np.testing.assert_allclose(together, [s["embeddings"][0] for s in singles], atol=1e-5)


async def test_request_larger_than_batch_is_split_in_order(aiohttp_client, engine) -> None:
    client = await make_client(aiohttp_client, engine, max_batch_size=4, max_batch_tokens=64)
    texts = [TEXTS[i % len(TEXTS)] + " " + "x " * (i % 7) for i in range(23)]
    body = await (await client.post("/embed", json={"texts": texts})).json()
    expected = engine.embed(texts)
    np.testing.assert_allclose(body["embeddings"], expected, atol=1e-5)
    metrics = await (await client.get("/metrics")).text()
    assert _metric(metrics, "akidb_model_server_batch_size_count") >= 6  # 23 / 4


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/embed", b"{oops", 400, "not valid JSON"),
        ("/embed", b"[]", 400, "must be a JSON object"),
        ("/embed", b"{}", 400, "missing required field `texts`"),
        ("/embed", b'{"texts": "one"}', 400, "Expected `array`, got `str`"),
        ("/embed", b'{"texts": []}', 400, "length >= 1"),
        ("/embed", b'{"texts": [""]}', 400, "length >= 1 - at `$.texts[0]`"),
        ("/embed", b'{"texts": [null]}', 400, "Expected `str`, got `null`"),
        ("/embed", b'{"texts": ["a"], "dimensions": 128}', 400, "allowed: [384]"),
        ("/embed", b'{"texts": ["a"], "model": "bge-small"}', 404, "serves 'all-minilm-l6-v2'"),
        ("/embed", b'{"texts": ["a"], "input_type": "code"}', 400, "input_type"),
        ("/v1/embeddings", b'{"input": [[100264, 9906]]}', 400, "check_embedding_ctx_length"),
        ("/tei/embed", b'{"inputs": ""}', 400, "length >= 1"),
        ("/v1/rerank", b'{"query": "q", "documents": ["d"]}', 400, "cannot rerank"),
        ("/v1/embeddings", b'{"input": "a", "encoding_format": "f16"}', 400, "encoding_format"),
        ("/v1/embeddings", b'{"input": "a", "model": "text-embedding-3-small"}', 404, "serves"),
    ],
)
async def test_bad_input_gets_clear_json_error(client, path, body, status, needle) -> None:
    resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == status
    err = (await resp.json())["error"]
    assert needle in err["message"]
    assert err["type"]


async def test_limits_too_many_texts_and_oversized_body(client) -> None:
    resp = await client.post("/embed", json={"texts": ["a"] * 65})
    assert resp.status == 400
    assert (
        "65 inputs in one request, more than the limit of 64"
        in (await resp.json())["error"]["message"]
    )
    resp = await client.post("/embed", json={"texts": ["a" * 70000]})
    assert resp.status == 413
    err = (await resp.json())["error"]
    assert err["code"] == "payload_too_large" and "65536 bytes" in err["message"]


async def test_unknown_route_and_method_are_json(client) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found_error"
    resp = await client.get("/embed")
    assert resp.status == 405 and "GET" in (await resp.json())["error"]["message"]


async def test_probes_info_models_metrics(client) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await (await client.get("/readyz")).json()) == {"status": "ready"}
    info = await (await client.get("/info")).json()
    assert info["model"]["name"] == "all-minilm-l6-v2" and info["model"]["pooling"] == "mean"
    assert info["providers"]["in_use"] == ["CPUExecutionProvider"]
    assert info["batching"]["max_batch_size"] == 32
    assert set(info["versions"]) >= {"onnxruntime", "tokenizers", "akidb_embed"}
    models = await (await client.get("/v1/models")).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "all-minilm-l6-v2"
    await client.post("/embed", json={"texts": ["a"]})
    await client.post("/embed", json={"texts": []})
    text = await (await client.get("/metrics")).text()
    assert 'akidb_model_server_requests_total{endpoint="/embed",status="200"} 1.0' in text
    assert 'akidb_model_server_requests_total{endpoint="/embed",status="400"} 1.0' in text
    for name in (
        "akidb_model_server_request_seconds_bucket",
        "akidb_model_server_queue_depth",
        "akidb_model_server_tokens_total",
        "akidb_model_server_inference_seconds_count",
        "akidb_model_server_ready 1.0",
    ):
        assert name in text


async def test_queue_full_gives_503_with_retry_after(aiohttp_client, engine) -> None:
    client = await make_client(aiohttp_client, engine, max_batch_size=1, max_queue_texts=2)
    texts = ["a fairly long sentence to keep the model busy for a little while " * 4] * 2
    resps = await asyncio.gather(*(client.post("/embed", json={"texts": texts}) for _ in range(12)))
    statuses = [r.status for r in resps]
    assert 503 in statuses and 200 in statuses
    busy = next(r for r in resps if r.status == 503)
    assert busy.headers["Retry-After"] == "1"
    assert (await busy.json())["error"]["code"] == "overloaded"


async def test_draining_refuses_new_work(client) -> None:
    client.model_server.begin_drain()
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["status"] == "draining"
    resp = await client.post("/embed", json={"texts": ["a"]})
    assert resp.status == 503 and resp.headers["Retry-After"]
    assert "shutting down" in (await resp.json())["error"]["message"]


async def test_not_ready_until_loaded(aiohttp_client, minilm_artifact: Path) -> None:
    server = ModelServer(loader=lambda: Engine(minilm_artifact, threads=1))
    client = await aiohttp_client(create_app(server))
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["status"] == "loading"
    resp = await client.post("/embed", json={"texts": ["a"]})
    assert resp.status == 503 and "loading" in (await resp.json())["error"]["message"]
    assert (await client.get("/healthz")).status == 200
    await asyncio.wait_for(server.loaded.wait(), 60)
    assert (await client.get("/readyz")).status == 200
    assert (await client.post("/embed", json={"texts": ["a"]})).status == 200


def test_official_openai_client_float_and_base64(engine: Engine) -> None:
    with ServerThread(engine) as srv:
        oa = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        f = oa.embeddings.create(input=TEXTS[:2], model="all-minilm-l6-v2", encoding_format="float")
        b = oa.embeddings.create(
            input=TEXTS[:2], model="all-minilm-l6-v2", encoding_format="base64"
        )
        d = oa.embeddings.create(input="hi", model="all-minilm-l6-v2")  # client default
        full = oa.embeddings.create(input="hi", model="all-minilm-l6-v2", dimensions=384)
        assert len(f.data) == 2 and len(f.data[0].embedding) == 384
        assert f.usage.prompt_tokens > 0 and f.model == "all-minilm-l6-v2"
        expected = engine.embed(TEXTS[:2])
        np.testing.assert_allclose([x.embedding for x in f.data], expected, atol=1e-5)
        got_b = [
            np.asarray(x.embedding, dtype=np.float32)
            if isinstance(x.embedding, list)
            else decode_base64(x.embedding)
            for x in b.data
        ]
        np.testing.assert_allclose(got_b, expected, atol=1e-5)
        np.testing.assert_allclose(d.data[0].embedding, engine.embed(["hi"])[0], atol=1e-5)
        assert len(full.data[0].embedding) == 384
        with pytest.raises(openai.BadRequestError, match=r"allowed: \[384\]"):
            oa.embeddings.create(input="hi", model="all-minilm-l6-v2", dimensions=128)
        with pytest.raises(openai.NotFoundError, match="serves 'all-minilm-l6-v2'"):
            oa.embeddings.create(input="hi", model="other-model")
        with pytest.raises(openai.BadRequestError, match="length >= 1"):
            oa.embeddings.create(input=[""], model="all-minilm-l6-v2")
