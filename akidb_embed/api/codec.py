"""The one JSON reader and writer of the HTTP APIs.

Reading: msgspec decodes and validates a request body against its type in one pass
(about what orjson takes to parse it without any check, 2-4x faster than pydantic:
`python -m bench.contract`); every failure becomes a 400
`ApiError` whose message names the field (`$.texts[1]`). Writing: orjson, which
serializes numpy arrays directly (the embeddings) without a `tolist()`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
import orjson

from akidb_embed.api.errors import ApiError, Code

T = TypeVar("T")

_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}
_ANY: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    return decoder


def _validation_code(message: str) -> Code:
    if message.startswith("Object contains unknown field"):
        return Code.UNKNOWN_FIELD
    if message.startswith("Object missing required field"):
        return Code.MISSING_FIELD
    return Code.INVALID_FIELD


def _integral(value: Any) -> Any:
    """`value` with every float that is a whole number (2.0, 1e3) made an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def _typed(kind: type[T], raw: bytes) -> T:
    try:
        return _decoder(kind).decode(raw)  # type: ignore[no-any-return]
    except msgspec.ValidationError as exc:
        if "got `float`" not in str(exc):
            raise
    # 2.0 is an integer in JSON (and JSON Schema): accept it, on this rare slow path only.
    return msgspec.convert(_integral(_ANY.decode(raw)), kind)


def decode(kind: type[T], raw: bytes) -> T:
    """The request body `raw` as a `kind`, or a 400 `ApiError` saying what is wrong."""
    if not raw:
        raise ApiError(Code.EMPTY_BODY, "the request body is empty; send a JSON object")
    try:
        return _typed(kind, raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if message.startswith("Expected `object`, got"):
            raise ApiError(
                Code.INVALID_JSON, f"the request body must be a JSON object ({message})"
            ) from None
        raise ApiError(_validation_code(message), f"invalid request: {message}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(Code.INVALID_JSON, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec skips unknown fields recursively
        raise ApiError(Code.INVALID_JSON, "the request body is nested too deeply") from None


def loads(raw: bytes) -> Any:
    """Untyped JSON (a model server's answer); raises ValueError when it is not JSON."""
    try:
        return _ANY.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
