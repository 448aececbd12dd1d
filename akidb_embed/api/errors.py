"""The one error type of every HTTP API, with a closed set of codes.

Every error any route answers, on the gateway or on a model server, is an `ApiError`
with a `Code`; `STATUS` maps each code to its HTTP status and error type in one place
(the JSON body is `{"error": {"type", "code", "message", ...details}}`). The types
follow OpenAI's (`invalid_request_error`, ...), so OpenAI clients raise the matching
exception; the codes say exactly what went wrong.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    # 400: the request is malformed or asks for something this model cannot do.
    EMPTY_BODY = "empty_body"
    INVALID_JSON = "invalid_json"
    INVALID_FIELD = "invalid_field"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    TOO_MANY_INPUTS = "too_many_inputs"
    UNSUPPORTED_DIMENSIONS = "unsupported_dimensions"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    TOKEN_IDS_NOT_IN_VOCABULARY = "token_ids_not_in_vocabulary"
    TEXT_TOO_LONG = "text_too_long"
    WRONG_TASK = "wrong_task"
    NO_DEFAULT_MODEL = "no_default_model"
    # 401
    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    # 404 / 405 / 413
    MODEL_NOT_FOUND = "model_not_found"
    ROUTE_NOT_FOUND = "route_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    # 5xx: not the client's fault.
    INTERNAL_ERROR = "internal_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_ERROR = "upstream_error"
    NOT_READY = "not_ready"
    LOADING = "loading"
    DRAINING = "draining"
    OVERLOADED = "overloaded"
    MODEL_FAILED = "model_failed"
    COLD_START_TIMEOUT = "cold_start_timeout"
    UPSTREAM_TIMEOUT = "upstream_timeout"


INVALID = "invalid_request_error"

# code -> (HTTP status, error type). The one place statuses are decided.
STATUS: dict[Code, tuple[int, str]] = {
    Code.EMPTY_BODY: (400, INVALID),
    Code.INVALID_JSON: (400, INVALID),
    Code.INVALID_FIELD: (400, INVALID),
    Code.UNKNOWN_FIELD: (400, INVALID),
    Code.MISSING_FIELD: (400, INVALID),
    Code.TOO_MANY_INPUTS: (400, INVALID),
    Code.UNSUPPORTED_DIMENSIONS: (400, INVALID),
    Code.UNSUPPORTED_ENCODING: (400, INVALID),
    Code.TOKEN_IDS_NOT_IN_VOCABULARY: (400, INVALID),
    Code.TEXT_TOO_LONG: (400, INVALID),
    Code.WRONG_TASK: (400, INVALID),
    Code.NO_DEFAULT_MODEL: (400, INVALID),
    Code.MISSING_API_KEY: (401, "authentication_error"),
    Code.INVALID_API_KEY: (401, "authentication_error"),
    Code.MODEL_NOT_FOUND: (404, "not_found_error"),
    Code.ROUTE_NOT_FOUND: (404, "not_found_error"),
    Code.METHOD_NOT_ALLOWED: (405, INVALID),
    Code.PAYLOAD_TOO_LARGE: (413, INVALID),
    Code.INTERNAL_ERROR: (500, "server_error"),
    Code.UPSTREAM_UNAVAILABLE: (502, "server_error"),
    Code.UPSTREAM_ERROR: (502, "server_error"),
    Code.NOT_READY: (503, "unavailable"),
    Code.LOADING: (503, "unavailable"),
    Code.DRAINING: (503, "unavailable"),
    Code.OVERLOADED: (503, "unavailable"),
    Code.MODEL_FAILED: (503, "unavailable"),
    Code.COLD_START_TIMEOUT: (504, "timeout"),
    Code.UPSTREAM_TIMEOUT: (504, "timeout"),
}

# Refusals that depend on the model (its dimensions, vocabulary, length, task), which
# only the model server (or, for the task, the gateway's model list) can know: a
# request can match the gateway's document and still get one of these.
MODEL_LIMIT_CODES = frozenset(
    {
        Code.TOO_MANY_INPUTS,
        Code.UNSUPPORTED_DIMENSIONS,
        Code.UNSUPPORTED_ENCODING,
        Code.TOKEN_IDS_NOT_IN_VOCABULARY,
        Code.TEXT_TOO_LONG,
        Code.WRONG_TASK,
        Code.NO_DEFAULT_MODEL,
    }
)


class ApiError(Exception):
    """An error answered as `{"error": {"type", "code", "message", ...details}}`."""

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status, self.type = STATUS[code]
        self.message = message
        self.headers = headers or {}
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"type": self.type, "code": str(self.code), "message": self.message}
            | self.details
        }
