"""Request parsing and errors for the model server's HTTP API (no I/O here).

Both the native ``POST /embed`` body and the OpenAI ``POST /v1/embeddings`` body are
parsed into one ``EmbedRequest``; every client mistake becomes an ``ApiError`` with a
4xx status and a message that says what to fix.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson


class ApiError(Exception):
    """An error answered as ``{"error": {"type", "message", "code"?}}``."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            err["code"] = self.code
        return {"error": err}


def bad_request(message: str, code: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request_error", message, code)


@dataclass
class Limits:
    max_texts_per_request: int
    dimensions: Sequence[int]  # allowed output dimensions
    model_names: Sequence[str]  # names this server answers to (first is the canonical one)


@dataclass
class EmbedRequest:
    texts: list[str]
    normalize: bool | None = None
    dimensions: int | None = None
    input_type: str | None = None
    truncate: bool = True
    encoding_format: str = "float"


def parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise bad_request("request body is empty; send a JSON object", "empty_body")
    try:
        data = orjson.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # orjson's error subclasses it
        raise bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(data, dict):
        raise bad_request(
            f"request body must be a JSON object, got {_type_name(data)}", "invalid_json"
        )
    return data


def _type_name(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def check_model(model: Any, limits: Limits) -> None:
    if model is None:
        return
    if not isinstance(model, str):
        raise bad_request(f"'model' must be a string, got {_type_name(model)}")
    if model.lower() not in {n.lower() for n in limits.model_names}:
        raise ApiError(
            404,
            "not_found_error",
            f"model {model!r} is not served here; this server serves {limits.model_names[0]!r}",
            "model_not_found",
        )


def _texts(value: Any, field: str, limits: Limits, allow_str: bool) -> list[str]:
    if value is None:
        raise bad_request(f"'{field}' is required: a non-empty array of strings", "missing_field")
    if isinstance(value, str) and allow_str:
        value = [value]
    if not isinstance(value, list):
        kind = "a string or an array of strings" if allow_str else "an array of strings"
        raise bad_request(f"'{field}' must be {kind}, got {_type_name(value)}")
    if not value:
        raise bad_request(f"'{field}' is empty; send at least one text", "empty_input")
    if len(value) > limits.max_texts_per_request:
        raise bad_request(
            f"'{field}' has {len(value)} texts, more than the limit of "
            f"{limits.max_texts_per_request} per request; split it into smaller requests",
            "too_many_texts",
        )
    for i, item in enumerate(value):
        if not isinstance(item, str):
            if allow_str and (
                isinstance(item, int)
                or (isinstance(item, list) and all(isinstance(x, int) for x in item))
            ):
                raise bad_request(
                    f"'{field}' holds token ids; this server accepts text only "
                    "(token-id input is not supported)",
                    "token_input_not_supported",
                )
            raise bad_request(f"'{field}[{i}]' must be a string, got {_type_name(item)}")
        if not item:
            raise bad_request(
                f"'{field}[{i}]' is an empty string; empty texts cannot be embedded",
                "empty_text",
            )
    return value


def _optional_bool(data: dict[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise bad_request(f"'{key}' must be a boolean, got {_type_name(value)}")


def _dimensions(value: Any, limits: Limits) -> int | None:
    if value is None:
        return None
    allowed = list(limits.dimensions)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'dimensions' must be an integer, got {_type_name(value)}")
    if value not in allowed:
        raise bad_request(
            f"'dimensions' {value} is not supported by this model; allowed: {allowed}",
            "unsupported_dimensions",
        )
    return value


def parse_native(data: dict[str, Any], limits: Limits) -> EmbedRequest:
    check_model(data.get("model"), limits)
    texts = _texts(data.get("texts"), "texts", limits, allow_str=False)
    input_type = data.get("input_type")
    if input_type is not None and input_type not in ("query", "document"):
        raise bad_request(f'\'input_type\' must be "query", "document" or null, got {input_type!r}')
    truncate = _optional_bool(data, "truncate")
    return EmbedRequest(
        texts=texts,
        normalize=_optional_bool(data, "normalize"),
        dimensions=_dimensions(data.get("dimensions"), limits),
        input_type=input_type,
        truncate=True if truncate is None else truncate,
    )


def parse_openai(data: dict[str, Any], limits: Limits) -> EmbedRequest:
    check_model(data.get("model"), limits)
    texts = _texts(data.get("input"), "input", limits, allow_str=True)
    fmt = data.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise bad_request(f'\'encoding_format\' must be "float" or "base64", got {fmt!r}')
    return EmbedRequest(
        texts=texts,
        dimensions=_dimensions(data.get("dimensions"), limits),
        encoding_format=fmt,
    )


def encode_base64(vector: npt.NDArray[np.float32]) -> str:
    """OpenAI's base64 format: the float32 little-endian bytes of the vector."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_base64(data: str) -> npt.NDArray[np.float32]:
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float32)
