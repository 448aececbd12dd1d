"""The gateway's error: an HTTP status, a type and a message, rendered as JSON."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class GatewayError(Exception):
    """An error answered to the client as `{"error": {"type", "message", ...}}`."""

    def __init__(
        self,
        status: int,
        type_: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def response(self) -> web.Response:
        return error_response(
            self.status, self.type, self.message, headers=self.headers, extra=self.extra
        )


def error_response(
    status: int,
    type_: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"type": type_, "message": message, **(extra or {})}
    return web.Response(
        status=status,
        body=json.dumps({"error": body}).encode(),
        content_type="application/json",
        headers=headers,
    )


def bad_request(message: str) -> GatewayError:
    return GatewayError(400, "invalid_request_error", message)
