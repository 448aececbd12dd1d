"""The OpenAPI 3.1 documents of the gateway and the model server, generated.

Schemas come from the request and response types (`types.py`, through msgspec's JSON
Schema generator), paths from the route table (`routes.py`), error statuses from the
error table (`errors.py`). A model server's document is narrowed to its model's
limits (`ModelLimits`): its dimensions, vocabulary, output types, names, request size.
Security is declared only when API keys are configured.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import msgspec

from akidb_embed import __version__
from akidb_embed.api import types as t
from akidb_embed.api.errors import STATUS, Code
from akidb_embed.api.limits import ModelLimits
from akidb_embed.api.routes import Route

REF = "#/components/schemas/{name}"

# The statuses each side can answer with, besides 200.
_SERVER_ONLY = {Code.LOADING, Code.DRAINING}
_GATEWAY_ONLY = {
    Code.MISSING_API_KEY,
    Code.INVALID_API_KEY,
    Code.UPSTREAM_UNAVAILABLE,
    Code.UPSTREAM_ERROR,
    Code.NOT_READY,
    Code.MODEL_FAILED,
    Code.COLD_START_TIMEOUT,
    Code.UPSTREAM_TIMEOUT,
}

HEADERS = {
    "X-Akidb-Pod": "The model-server pod that answered",
    "X-Akidb-Model": "The EmbeddingModel that answered (the resolved name)",
    "X-Akidb-Model-Match": "How the requested name matched it: name, catalog-id, repo-id, "
    "alias, source or default",
    "X-Akidb-Cold-Start": "Seconds the request waited for the model to start (only when it did)",
}


def _statuses(codes: Iterable[Code]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for code in codes:
        out.setdefault(STATUS[code][0], []).append(str(code))
    return out


def _error_responses(gateway: bool, secured: bool, route: Route) -> dict[str, Any]:
    skip = _SERVER_ONLY if gateway else _GATEWAY_ONLY
    codes = [c for c in Code if c not in skip]
    if not secured or route.open:
        codes = [c for c in codes if STATUS[c][0] != 401]
    if route.request is None:  # GET routes: no body, no model, nothing to forward
        codes = [c for c in codes if STATUS[c][0] in (401, 404, 405, 500)]
    ref = {"$ref": REF.format(name="ErrorResponse")}
    out = {
        str(status): {
            "description": "codes: " + ", ".join(names),
            "content": {"application/json": {"schema": ref}},
        }
        for status, names in sorted(_statuses(codes).items())
    }
    if route.name == "readyz":
        out["503"] = {
            "description": "not ready: loading, failed, not synced yet, or draining",
            "content": {"application/json": {"schema": {"$ref": REF.format(name="Status")}}},
        }
    return out


def _operation(route: Route, gateway: bool, secured: bool, schema_of: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary}
    if route.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema_of(route.request)}},
        }
    ok: dict[str, Any] = {"description": "OK"}
    if route.response is not None:
        ok["content"] = {route.content_type: {"schema": schema_of(route.response)}}
    else:
        ok["content"] = {route.content_type: {"schema": {"type": "string"}}}
    if gateway and route.forwards:
        ok["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in HEADERS.items()
        }
    op["responses"] = {"200": ok, **_error_responses(gateway, secured, route)}
    op["security"] = [{"bearer": []}] if secured and not route.open else []
    return op


def document(
    routes: list[Route],
    *,
    title: str,
    gateway: bool,
    secured: bool = False,
    limits: ModelLimits | None = None,
) -> dict[str, Any]:
    """The OpenAPI document of `routes` (a model server passes its `limits`)."""
    types: list[Any] = [t.ErrorResponse]
    for r in routes:
        types += [x for x in (r.request, r.response) if x is not None]
    top, components = msgspec.json.schema_components(types, ref_template=REF)
    index = {id(x): s for x, s in zip(types, top, strict=True)}
    for (name, prop), exact in t.EXACT_SCHEMAS.items():
        if name in components:
            components[name]["properties"][prop] = copy.deepcopy(exact)
    if limits is not None:
        narrow(components, limits)

    def schema_of(kind: Any) -> dict[str, Any]:
        return copy.deepcopy(index[id(kind)])

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        path = r.path if gateway else (r.server_path or r.path)
        paths.setdefault(path, {})[r.method.lower()] = _operation(r, gateway, secured, schema_of)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }
    if secured:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return doc


def _set(schema: dict[str, Any], path: list[str], **values: Any) -> None:
    node = schema
    for key in path:
        node = node[key]
    node.update(values)


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return list(prop.get("anyOf", [prop]))


def narrow(components: dict[str, Any], limits: ModelLimits) -> None:
    """Restrict the request schemas to what the model behind `limits` accepts."""
    max_token = max(0, limits.vocab_size - 1)
    for name, schema in components.items():
        props = schema.get("properties") or {}
        if not name.endswith("Request"):
            continue
        if "model" in props:
            props["model"] = {"anyOf": [{"enum": list(limits.names)}, {"type": "null"}]}
        if "dimensions" in props:
            props["dimensions"] = {"anyOf": [{"enum": sorted(limits.dimensions)}, {"type": "null"}]}
        if "encoding_format" in props:
            props["encoding_format"] = {"enum": list(limits.encodings)}
        for key in ("texts", "documents"):
            if key in props and props[key].get("type") == "array":
                props[key]["maxItems"] = limits.max_inputs
        for key in ("input", "inputs"):
            for variant in _variants(props.get(key, {})):
                if variant.get("type") != "array":
                    continue
                items = variant["items"]
                if items.get("type") == "integer":  # one token-id sequence
                    items["maximum"] = max_token
                    continue
                variant["maxItems"] = limits.max_inputs
                if items.get("type") == "array":
                    items["items"]["maximum"] = max_token
