"""Tiny random cross-encoders (BERT with token types, XLM-R without) served over HTTP:
relevance scores against their transformers reference, Cohere/Jina and TEI shapes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from akidb_embed.artifact import ArtifactManifest
from akidb_embed.model_server.app import ModelServer, ServerSettings, create_app
from akidb_embed.model_server.engine import Engine

pytestmark = pytest.mark.slow

QUERY = "What is the capital of France?"
DOCS = [
    "Paris is the capital and most populous city of France.",
    "The quick brown fox jumps over the lazy dog.",
    "hello",
    "Kubernetes schedules pods onto nodes; an operator reconciles custom resources, "
    "and the gateway holds requests while a cold model starts on the Jetson node.",
]


def reference_scores(checkpoint: Path, query: str, docs: list[str]) -> np.ndarray:
    """sigmoid(logit) of each (query, document) pair from transformers, one padded batch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
    batch = tok(
        [query] * len(docs),
        docs,
        padding=True,
        truncation=True,
        max_length=128,
        return_tensors="pt",
    )
    with torch.no_grad():
        logits = model(**batch).logits[:, 0]
    return torch.sigmoid(logits).numpy()


async def serve(aiohttp_client, artifact: Path):  # type: ignore[no-untyped-def]
    server = ModelServer(
        ServerSettings(self_benchmark=False), loader=lambda: Engine(artifact, threads=1)
    )
    client = await aiohttp_client(create_app(server))
    await asyncio.wait_for(server.loaded.wait(), 60)
    assert server.state == "ready", server.failure
    return client


@pytest.mark.parametrize("which", ["bert", "xlmr"])
async def test_cross_encoder_scores_match_transformers(
    aiohttp_client,
    which: str,
    tiny_bert_reranker_artifact: Path,
    tiny_bert_reranker_checkpoint: Path,
    tiny_xlmr_reranker_artifact: Path,
    tiny_xlmr_reranker_checkpoint: Path,
) -> None:
    artifact, ckpt = {
        "bert": (tiny_bert_reranker_artifact, tiny_bert_reranker_checkpoint),
        "xlmr": (tiny_xlmr_reranker_artifact, tiny_xlmr_reranker_checkpoint),
    }[which]
    manifest = ArtifactManifest.load(artifact)
    assert manifest.task == "rerank" and manifest.output == "logits"
    assert manifest.parity is not None and manifest.parity.max_abs_error is not None
    assert ("token_type_ids" in manifest.inputs) == (which == "bert")
    expected = reference_scores(ckpt, QUERY, DOCS)
    client = await serve(aiohttp_client, artifact)

    resp = await client.post(
        "/v1/rerank",
        json={"query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    results = body["results"]
    order = list(np.argsort(-expected, kind="stable"))[:3]
    assert [r["index"] for r in results] == order
    for r in results:
        assert r["relevance_score"] == pytest.approx(float(expected[r["index"]]), abs=1e-5)
        assert r["document"] == {"text": DOCS[r["index"]]}
    assert body["model"] == manifest.name and body["usage"]["total_tokens"] > 0
    # Cohere documents may be objects; without return_documents no text comes back
    resp = await client.post(
        "/v1/rerank", json={"query": QUERY, "documents": [{"text": d} for d in DOCS]}
    )
    plain = (await resp.json())["results"]
    assert len(plain) == len(DOCS) and "document" not in plain[0]

    # TEI /rerank: all texts ranked; raw_scores gives the logits
    resp = await client.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True})
    ranks = await resp.json()
    assert [r["index"] for r in ranks] == list(np.argsort(-expected, kind="stable"))
    assert ranks[0]["text"] == DOCS[ranks[0]["index"]]
    raw = await (
        await client.post("/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True})
    ).json()
    logit = {r["index"]: r["score"] for r in raw}
    np.testing.assert_allclose(
        [1 / (1 + np.exp(-logit[i])) for i in range(len(DOCS))], expected, atol=1e-5
    )

    # a reranker refuses embedding calls with a clear error
    resp = await client.post("/v1/embeddings", json={"input": "hi"})
    err = (await resp.json())["error"]
    assert resp.status == 400 and err["code"] == "wrong_task" and "reranker" in err["message"]
    doc = await (await client.get("/openapi.json")).json()
    assert "/v1/rerank" in doc["paths"] and "/v1/embeddings" not in doc["paths"]
