"""What the gateway does with a model call: check its shape, pick the model, forward.

The body is decoded with the route's request type from the contract (shape only: the
model's own limits are the model server's to apply) and, when it is well formed, the
client's bytes are forwarded unchanged to the same route of a pod of the model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from akidb_embed.api import codec
from akidb_embed.api.errors import ApiError, Code
from akidb_embed.api.limits import wrong_task
from akidb_embed.api.routes import Route
from akidb_embed.gateway.registry import Registry


@dataclass(frozen=True)
class Target:
    model: str  # the EmbeddingModel
    match: str  # how the requested name matched: name, catalog-id, ..., or default


def requested_model(route: Route, raw: bytes) -> str | None:
    """Decode `raw` as the route's request (400 when malformed); the `model` it names."""
    request: Any = codec.decode(route.request, raw)
    return request.model  # type: ignore[no-any-return]


def default_model(registry: Registry, route: Route, configured: str) -> str:
    """The model of a call that names none: the configured default for embeddings
    and tokenizing, the only reranker for rerank calls."""
    if route.task != "rerank":
        return configured
    rerankers = sorted(n for n, s in registry.models.items() if s.task == "rerank")
    if len(rerankers) == 1:
        return rerankers[0]
    raise ApiError(
        Code.NO_DEFAULT_MODEL,
        "name the reranker in 'model'; rerankers here: " + (", ".join(rerankers) or "(none)"),
        details={"known_models": rerankers},
    )


def check_task(registry: Registry, route: Route, model: str) -> None:
    """Refuse a call the model cannot serve before it is started for nothing."""
    state = registry.models.get(model)
    if route.task is not None and state is not None and state.task != route.task:
        raise wrong_task(model, state.task, route.task)


def match_kind(registry: Registry, model: str, requested: str | None) -> str:
    if requested is None:
        return "default"
    state = registry.models.get(model)
    if state is None or requested.lower() == model.lower():
        return "name"
    return state.alias_kinds.get(requested.lower(), "name")


def names_model(route: Route) -> bool:
    """The route's answer carries a `model` field (the gateway sets it to the resource)."""
    return "model" in getattr(route.response, "__struct_fields__", ())


@functools.lru_cache(maxsize=1024)
def _model_fields(model: str) -> tuple[bytes, bytes]:
    name = codec.dumps(model)
    return b'"model":' + name, b'"model": ' + name


def rewrite_model(body: bytes, model: str) -> bytes:
    """Set the `model` field of a model server's JSON answer to the resource name.

    The common case (the server already names the model so) passes the bytes through
    untouched: re-encoding hundreds of floats would cost more than the whole hop."""
    compact, spaced = _model_fields(model)
    if compact in body or spaced in body:
        return body
    try:
        data = codec.loads(body)
    except ValueError:
        raise ApiError(Code.UPSTREAM_ERROR, "the model server answered with invalid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(Code.UPSTREAM_ERROR, "the model server answered a non-object")
    data["model"] = model
    return codec.dumps(data)
