"""Real clients, unchanged, against the gateway in front of real model servers (MiniLM
with its real weights, a tiny cross-encoder): openai, LangChain, LlamaIndex,
huggingface_hub's InferenceClient (TEI), cohere (rerank)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.gateway.live import MINILM, RERANKER, live_stack

pytestmark = pytest.mark.slow

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings for search", "hello"]


@pytest.fixture(scope="module")
def stack(minilm_artifact: Path, tiny_bert_reranker_artifact: Path) -> Iterator[dict[str, Any]]:
    with live_stack(minilm_artifact, tiny_bert_reranker_artifact) as live:
        yield live


@pytest.fixture(scope="module")
def direct(stack: dict[str, Any]) -> np.ndarray:
    """What the model server itself answers (native API), the reference for every client."""
    body = httpx.post(stack["embedder"].url + "/embed", json={"texts": TEXTS}).json()
    return np.asarray(body["embeddings"], dtype=np.float32)


def test_openai_client_text_token_ids_and_the_langchain_hint(
    stack: dict[str, Any], direct: np.ndarray
) -> None:
    import openai

    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="x", max_retries=0)
    result = client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=TEXTS)
    assert result.model == MINILM
    np.testing.assert_allclose([d.embedding for d in result.data], direct, atol=1e-5)
    # token ids in the model's vocabulary, as /tokenize gives them
    tokens = httpx.post(stack["url"] + "/tokenize", json={"inputs": TEXTS[2]}).json()[0]
    ids = [t["id"] for t in tokens]
    by_ids = client.embeddings.create(model=MINILM, input=[ids], encoding_format="float")
    np.testing.assert_allclose(by_ids.data[0].embedding, direct[2], atol=1e-5)
    # another tokenizer's ids (tiktoken's, as LangChain sends by default): a clear 400
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False"):
        client.embeddings.create(model=MINILM, input=[[100264, 9906, 1917]])
    # vector-database output types through the OpenAI route
    raw = httpx.post(
        stack["url"] + "/v1/embeddings",
        json={"model": MINILM, "input": TEXTS, "encoding_format": "ubinary"},
    )
    packed = np.asarray([d["embedding"] for d in raw.json()["data"]], dtype=np.uint8)
    np.testing.assert_array_equal(packed, np.packbits(direct > 0, axis=-1))
    int8 = httpx.post(
        stack["url"] + "/api/v1/embed",
        json={"model": MINILM, "texts": TEXTS, "encoding_format": "int8"},
    ).json()
    assert int8["encoding_format"] == "int8" and len(int8["embeddings"][0]) == 384
    values = np.asarray(int8["embeddings"])
    assert values.min() >= -128 and values.max() <= 127 and len(np.unique(values)) > 50


def test_langchain_openai_embeddings(stack: dict[str, Any], direct: np.ndarray) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model=MINILM,
        base_url=stack["url"] + "/v1",
        api_key="x",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    np.testing.assert_allclose(emb.embed_documents(TEXTS), direct, atol=1e-5)
    np.testing.assert_allclose(emb.embed_query(TEXTS[0]), direct[0], atol=1e-5)


def test_llamaindex_openai_like_embedding(stack: dict[str, Any], direct: np.ndarray) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    emb = OpenAILikeEmbedding(model_name=MINILM, api_base=stack["url"] + "/v1", api_key="x")
    np.testing.assert_allclose(emb.get_text_embedding_batch(TEXTS), direct, atol=1e-5)
    np.testing.assert_allclose(emb.get_query_embedding(TEXTS[1]), direct[1], atol=1e-5)


def test_huggingface_hub_inference_client_tei(
    stack: dict[str, Any],
    direct: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.utils import reset_sessions

    # Other tests (and offline CI machines) set the hub client offline; its offline mode
    # refuses every URL, loopback included, and its HTTP sessions are cached with it. This
    # client talks only to the local gateway; the sessions are reset before and after.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    request.addfinalizer(reset_sessions)

    client = InferenceClient(base_url=stack["url"])  # POST / with TEI's body
    got = client.feature_extraction(TEXTS[0])
    assert got.shape == (1, 384)
    np.testing.assert_allclose(got[0], direct[0], atol=1e-5)
    batch = InferenceClient(base_url=stack["url"] + "/embed").feature_extraction(
        TEXTS, normalize=True, truncate=True
    )
    np.testing.assert_allclose(batch, direct, atol=1e-5)
    info = httpx.get(stack["url"] + "/info").json()
    assert info["model_id"] == MINILM and "embedding" in info["model_type"]


def test_cohere_and_jina_style_rerank(stack: dict[str, Any]) -> None:
    import cohere

    docs = ["Paris is the capital of France.", "A fox jumps.", "France's capital city"]
    query = "What is the capital of France?"
    tei = httpx.post(
        stack["url"] + "/rerank", json={"query": query, "texts": docs, "model": RERANKER}
    )
    assert tei.status_code == 200, tei.text
    expected = {r["index"]: r["score"] for r in tei.json()}

    v2 = cohere.ClientV2(base_url=stack["url"], api_key="x")
    result = v2.rerank(model=RERANKER, query=query, documents=docs, top_n=2)
    assert [r.index for r in result.results] == sorted(expected, key=lambda i: -expected[i])[:2]
    for r in result.results:
        assert r.relevance_score == pytest.approx(expected[r.index], abs=1e-6)
    v1 = cohere.Client(base_url=stack["url"], api_key="x")
    old = v1.rerank(model=RERANKER, query=query, documents=docs, return_documents=True)
    assert {r.index: r.document.text for r in old.results} == dict(enumerate(docs))  # type: ignore[union-attr]
    # Jina's body: the same route, documents back by default off, top_n honoured
    jina = httpx.post(
        stack["url"] + "/v1/rerank",
        json={"model": RERANKER, "query": query, "documents": docs, "top_n": 1},
    ).json()
    assert len(jina["results"]) == 1 and jina["model"] == RERANKER
    # a reranker is the only one here: TEI's /rerank needs no model; embedders refuse
    assert httpx.post(stack["url"] + "/rerank", json={"query": query, "texts": docs}).is_success
    wrong = httpx.post(
        stack["url"] + "/v1/rerank", json={"model": MINILM, "query": query, "documents": docs}
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_task"
    assert wrong.headers.get("X-Akidb-Pod") is None  # refused before any pod was asked
