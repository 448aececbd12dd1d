"""Every HTTP route, once: path, method, request and response types, task, where served.

The gateway and the model server register their handlers from this table and the
OpenAPI documents are generated from it, so a route cannot exist without being
documented, or be documented with another shape than the one its handler decodes.
`path` is the public path (the gateway's); `server_path` is where a model server
serves it and where the gateway forwards it (None: the gateway answers itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from akidb_embed.api import types as t


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    summary: str
    request: Any = None  # a types.* Struct, for POST routes
    response: Any = None  # the 200 body's type (None: not JSON)
    task: str | None = None  # embed | rerank: only models of that task serve it
    server_path: str | None = None  # on the model server; None: gateway only
    gateway: bool = True  # the gateway serves `path`
    open: bool = False  # needs no API key (probes, metrics, the document)
    content_type: str = "application/json"

    @property
    def forwards(self) -> bool:
        """A model call: the gateway checks its shape and forwards it to a model server."""
        return self.request is not None


ROUTES: tuple[Route, ...] = (
    Route(
        "embed",
        "POST",
        "/api/v1/embed",
        "Embed texts (native API)",
        t.EmbedRequest,
        t.EmbedResponse,
        "embed",
        "/embed",
    ),
    Route(
        "openai_embeddings",
        "POST",
        "/v1/embeddings",
        "OpenAI-compatible embeddings (text or token ids)",
        t.OpenAIEmbeddingRequest,
        t.OpenAIEmbeddingResponse,
        "embed",
        "/v1/embeddings",
    ),
    Route(
        "tei_embed",
        "POST",
        "/embed",
        "Text Embeddings Inference embeddings (a JSON array of vectors)",
        t.TeiEmbedRequest,
        list[list[float]],
        "embed",
        "/tei/embed",
    ),
    Route(
        "tei_predict",
        "POST",
        "/",
        "Text Embeddings Inference's root route (embeddings): what InferenceClient(base_url) calls",
        t.TeiEmbedRequest,
        list[list[float]],
        "embed",
        "/tei/embed",
    ),
    Route(
        "rerank",
        "POST",
        "/v1/rerank",
        "Rerank documents for a query (Cohere / Jina shape)",
        t.RerankRequest,
        t.RerankResponse,
        "rerank",
        "/v1/rerank",
    ),
    Route(
        "rerank_v2",
        "POST",
        "/v2/rerank",
        "Rerank documents for a query (Cohere v2 client path)",
        t.RerankRequest,
        t.RerankResponse,
        "rerank",
        "/v1/rerank",
    ),
    Route(
        "tei_rerank",
        "POST",
        "/rerank",
        "Text Embeddings Inference rerank (a JSON array of ranks)",
        t.TeiRerankRequest,
        list[t.TeiRank],
        "rerank",
        "/rerank",
    ),
    Route(
        "tokenize",
        "POST",
        "/tokenize",
        "Text Embeddings Inference tokenize: the model's token ids for texts",
        t.TokenizeRequest,
        list[list[t.TeiToken]],
        None,
        "/tokenize",
    ),
    Route(
        "tei_info",
        "GET",
        "/info",
        "Text Embeddings Inference info of the default model",
        response=t.TeiInfo,
    ),
    Route(
        "models",
        "GET",
        "/api/v1/models",
        "Models with live phase, task, aliases and measured performance",
        response=t.GatewayModels,
    ),
    Route(
        "openai_models",
        "GET",
        "/v1/models",
        "OpenAI-compatible model list",
        response=t.OpenAIModelList,
        server_path="/v1/models",
    ),
    Route(
        "server_info",
        "GET",
        "/info",
        "The served model, providers, batching, measured performance",
        response=dict[str, Any],
        server_path="/info",
        gateway=False,
        open=True,
    ),
    Route(
        "healthz",
        "GET",
        "/healthz",
        "Liveness",
        response=t.Status,
        server_path="/healthz",
        open=True,
    ),
    Route(
        "readyz", "GET", "/readyz", "Readiness", response=t.Status, server_path="/readyz", open=True
    ),
    Route(
        "metrics",
        "GET",
        "/metrics",
        "Prometheus metrics",
        server_path="/metrics",
        open=True,
        content_type="text/plain",
    ),
    Route(
        "openapi",
        "GET",
        "/openapi.json",
        "This document",
        response=dict[str, Any],
        server_path="/openapi.json",
        open=True,
    ),
)


def gateway_routes() -> list[Route]:
    return [r for r in ROUTES if r.gateway]


def server_routes(task: str | None) -> list[Route]:
    """A model server's routes (one per server path); `task` None: all of them."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in ROUTES:
        if r.server_path is None or (r.method, r.server_path) in seen:
            continue
        if task is not None and r.task not in (None, task):
            continue
        seen.add((r.method, r.server_path))
        out.append(r)
    return out


def by_name(name: str) -> Route:
    for r in ROUTES:
        if r.name == name:
            return r
    raise KeyError(name)
