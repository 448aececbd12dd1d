"""Response bodies of every route, built as plain data for `codec.dumps` (orjson).

Embeddings stay numpy arrays (orjson writes them without converting to lists); the
shapes are the ones `types.py` declares in the document.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}


def embed(model: str, dimension: int, encoding: str, vectors: Any, tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "dimension": dimension,
        "encoding_format": encoding,
        "embeddings": vectors,
        "usage": _usage(tokens),
    }


def openai_embeddings(model: str, vectors: Any, tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": _usage(tokens),
    }


def ranking(scores: npt.NDArray[np.float32], top_n: int | None) -> list[int]:
    """Indices by descending score (stable for ties), the first `top_n` of them."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]


def rerank(
    model: str,
    scores: npt.NDArray[np.float32],
    documents: Sequence[str],
    top_n: int | None,
    return_documents: bool,
    tokens: int,
) -> dict[str, Any]:
    results = []
    for i in ranking(scores, top_n):
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            item["document"] = {"text": documents[i]}
        results.append(item)
    return {
        "id": str(uuid.uuid4()),
        "model": model,
        "results": results,
        "usage": {"total_tokens": tokens},
    }


def tei_rerank(
    scores: npt.NDArray[np.float32], texts: Sequence[str], return_text: bool
) -> list[dict[str, Any]]:
    out = []
    for i in ranking(scores, None):
        item: dict[str, Any] = {"index": i, "score": float(scores[i])}
        if return_text:
            item["text"] = texts[i]
        out.append(item)
    return out


def models_list(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": entries}
