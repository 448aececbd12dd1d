"""Request bodies of the gateway's embedding APIs: parse, validate, shape for upstream.

Each parser returns the requested model name (None -> the default model) and the body
to send to the model server (its `/embed` or `/v1/embeddings`). A malformed body raises
a 400 `GatewayError` that says what is wrong.
"""

from __future__ import annotations

import json
from typing import Any

from akidb_embed.gateway.errors import GatewayError, bad_request

NATIVE_FIELDS = ("model", "texts", "normalize", "dimensions", "input_type", "truncate")
INPUT_TYPES = ("query", "document")
ENCODING_FORMATS = ("float", "base64")


def load_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    return body


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is None:
        return None
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' must be a non-empty string")
    return model.strip()


def _dimensions(body: dict[str, Any]) -> int | None:
    dims = body.get("dimensions")
    if dims is None:
        return None
    if isinstance(dims, bool) or not isinstance(dims, int) or dims <= 0:
        raise bad_request("'dimensions' must be a positive integer")
    return dims


def _optional_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"'{key}' must be true or false")
    return value


def _input_type(body: dict[str, Any]) -> str | None:
    value = body.get("input_type")
    if value is not None and value not in INPUT_TYPES:
        raise bad_request("'input_type' must be 'query', 'document' or null")
    return value


def parse_native(body: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """`POST /api/v1/embed` -> (model, body for the model server's `/embed`)."""
    unknown = sorted(set(body) - set(NATIVE_FIELDS))
    if unknown:
        raise bad_request(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(NATIVE_FIELDS)}"
        )
    model = _model(body)
    texts = body.get("texts")
    if texts is None:
        raise bad_request("'texts' is required: a non-empty list of strings")
    if not isinstance(texts, list) or not texts:
        raise bad_request("'texts' must be a non-empty list of strings")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise bad_request(f"'texts[{i}]' must be a string, got {type(text).__name__}")
    upstream: dict[str, Any] = {"texts": texts}
    for key, value in (
        ("normalize", _optional_bool(body, "normalize")),
        ("truncate", _optional_bool(body, "truncate")),
        ("dimensions", _dimensions(body)),
        ("input_type", _input_type(body)),
    ):
        if value is not None:
            upstream[key] = value
    return model, upstream


def parse_openai(body: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """`POST /v1/embeddings` -> (model, body for the model server's `/v1/embeddings`).

    Unknown fields are ignored (OpenAI clients send e.g. `user`)."""
    model = _model(body)
    raw = body.get("input")
    if raw is None:
        raise bad_request("'input' is required: a string or a non-empty list of strings")
    if isinstance(raw, str):
        inputs: str | list[str] = raw
    elif isinstance(raw, list) and raw:
        if any(isinstance(item, int | list) and not isinstance(item, str) for item in raw):
            raise bad_request("token arrays are not supported; send 'input' as text")
        for i, item in enumerate(raw):
            if not isinstance(item, str):
                raise bad_request(f"'input[{i}]' must be a string, got {type(item).__name__}")
        inputs = raw
    else:
        raise bad_request("'input' must be a string or a non-empty list of strings")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODING_FORMATS:
        raise bad_request("'encoding_format' must be 'float' or 'base64'")
    upstream: dict[str, Any] = {"input": inputs}
    if encoding is not None:
        upstream["encoding_format"] = encoding
    dims = _dimensions(body)
    if dims is not None:
        upstream["dimensions"] = dims
    input_type = _input_type(body)
    if input_type is not None:
        upstream["input_type"] = input_type
    return model, upstream


def rewrite_model(body: bytes, model: str) -> bytes:
    """Set the `model` field of a model server's JSON answer to the resource name.

    The common case (the server already names the model so) passes the bytes through
    untouched: re-encoding hundreds of floats would cost more than the whole hop."""
    name = json.dumps(model).encode()
    if b'"model": ' + name in body or b'"model":' + name in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        raise GatewayError(
            502, "upstream_error", "the model server answered with invalid JSON"
        ) from None
    if not isinstance(data, dict):
        raise GatewayError(502, "upstream_error", "the model server answered a non-object")
    data["model"] = model
    return json.dumps(data, separators=(",", ":")).encode()
