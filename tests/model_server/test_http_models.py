"""Tiny BERT (CLS), tiny Qwen3 (last token, left padding) and int8 MiniLM, served over
HTTP and compared with their PyTorch / sentence-transformers references."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from akidb_embed.artifact import ArtifactManifest
from akidb_embed.model_server.app import ModelServer, ServerSettings, create_app
from akidb_embed.model_server.engine import Engine

pytestmark = pytest.mark.slow

# Mixed lengths, so every batch has padding (right for BERT, left for Qwen3).
TEXTS = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France?",
    "Embedding models turn text into vectors for semantic search, and ONNX Runtime runs "
    "the graph with TensorRT, CUDA or the CPU on a Jetson Thor.",
    "ok",
]


def torch_reference(checkpoint: Path, texts: list[str], pooling: str, padding: str) -> np.ndarray:
    """Pooled, normalized embeddings from transformers on PyTorch, one padded batch."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    tok.padding_side = padding
    model = AutoModel.from_pretrained(str(checkpoint)).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    if pooling == "cls":
        pooled = hidden[:, 0]
    else:
        assert padding == "left"
        pooled = hidden[:, -1]
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


async def serve(aiohttp_client, artifact: Path, **settings):  # type: ignore[no-untyped-def]
    server = ModelServer(ServerSettings(**settings), loader=lambda: Engine(artifact, threads=2))
    client = await aiohttp_client(create_app(server))
    await asyncio.wait_for(server.loaded.wait(), 120)
    assert server.state == "ready", server.failure
    return client


async def embed(client, texts, **extra) -> np.ndarray:  # type: ignore[no-untyped-def]
    resp = await client.post("/embed", json={"texts": texts, **extra})
    assert resp.status == 200, await resp.text()
    return np.asarray((await resp.json())["embeddings"], dtype=np.float32)


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


async def test_tiny_bert_cls_matches_torch(
    aiohttp_client, tiny_bert_artifact, tiny_bert_checkpoint
):
    manifest = ArtifactManifest.load(tiny_bert_artifact)
    assert manifest.pooling == "cls" and manifest.query_prefix
    client = await serve(aiohttp_client, tiny_bert_artifact)
    got = await embed(client, TEXTS)
    ref = torch_reference(tiny_bert_checkpoint, TEXTS, "cls", "right")
    assert got.shape == (len(TEXTS), manifest.dimension)
    assert _min_cos(got, ref) >= 0.999
    # input_type=query applies the family's query prefix; no input_type does not.
    query = await embed(client, TEXTS, input_type="query")
    ref_q = torch_reference(
        tiny_bert_checkpoint, [manifest.query_prefix + t for t in TEXTS], "cls", "right"
    )
    assert _min_cos(query, ref_q) >= 0.999
    assert np.abs(query - got).max() > 1e-4  # the prefix changed the input
    doc = await embed(client, TEXTS, input_type="document")  # bge: no document prefix
    np.testing.assert_allclose(doc, got, atol=1e-5)


async def test_tiny_qwen3_last_token_left_padding_matches_torch(
    aiohttp_client, tiny_qwen3_artifact, tiny_qwen3_checkpoint
):
    manifest = ArtifactManifest.load(tiny_qwen3_artifact)
    assert manifest.pooling == "last-token" and manifest.padding_side == "left"
    client = await serve(aiohttp_client, tiny_qwen3_artifact)
    got = await embed(client, TEXTS)
    ref = torch_reference(tiny_qwen3_checkpoint, TEXTS, "last-token", "left")
    assert _min_cos(got, ref) >= 0.999
    # Each text alone (no padding) gives the same vector as inside the mixed batch.
    alone = np.concatenate([await embed(client, [t]) for t in TEXTS])
    assert _min_cos(alone, got) >= 0.9999
    query = await embed(client, TEXTS[:2], input_type="query")
    ref_q = torch_reference(
        tiny_qwen3_checkpoint, [manifest.query_prefix + t for t in TEXTS[:2]], "last-token", "left"
    )
    assert _min_cos(query, ref_q) >= 0.999


async def test_tiny_qwen3_matryoshka_dimensions(aiohttp_client, tiny_qwen3_artifact):
    client = await serve(aiohttp_client, tiny_qwen3_artifact)
    full = await embed(client, TEXTS)
    for dims in (16, 32):
        short = await embed(client, TEXTS, dimensions=dims)
        prefix = full[:, :dims]
        np.testing.assert_allclose(
            short, prefix / np.linalg.norm(prefix, axis=1, keepdims=True), atol=1e-5
        )
    resp = await client.post("/v1/embeddings", json={"input": TEXTS, "dimensions": 24})
    assert resp.status == 400
    assert "allowed: [16, 32, 64]" in (await resp.json())["error"]["message"]


async def test_int8_minilm_served(aiohttp_client, minilm_int8_artifact, minilm_checkpoint):
    from sentence_transformers import SentenceTransformer

    assert ArtifactManifest.load(minilm_int8_artifact).precision == "int8"
    client = await serve(aiohttp_client, minilm_int8_artifact)
    info = await (await client.get("/info")).json()
    assert info["model"]["precision"] == "int8"
    got = await embed(client, TEXTS)
    ref = SentenceTransformer(str(minilm_checkpoint), device="cpu").encode(
        TEXTS, normalize_embeddings=True
    )
    # int8 is an approximation: close, not identical.
    assert _min_cos(got, ref) >= 0.95


async def test_served_without_name_answers_to_its_catalog_names(
    aiohttp_client, minilm_artifact: Path, tmp_path: Path
):
    """`akidb-embed serve DIR` of a folder named "model" (no --name): the OpenAI client's
    model="all-minilm-l6-v2" (and the repo id) must not be a 404."""
    import shutil

    local = tmp_path / "model"
    shutil.copytree(minilm_artifact, local)
    manifest = ArtifactManifest.load(local)
    manifest.name, manifest.source = "model", str(tmp_path / "checkpoints" / "model")
    assert manifest.catalog_id == "all-minilm-l6-v2"  # what the conversion recognised
    manifest.save(local)
    client = await serve(aiohttp_client, local)
    for name in ("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "MODEL"):
        resp = await client.post("/v1/embeddings", json={"input": "hi", "model": name})
        assert resp.status == 200, await resp.text()
    resp = await client.post("/v1/embeddings", json={"input": "hi", "model": "e5-small-v2"})
    assert resp.status == 404
    assert "all-minilm-l6-v2" in (await resp.json())["error"]["known_models"]
