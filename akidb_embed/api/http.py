"""aiohttp glue shared by the gateway and the model server: JSON responses and errors.

`errors_middleware` turns every `ApiError`, every aiohttp HTTP error (404, 405, 413)
and any unexpected exception into the one error body, so neither app renders errors
itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from akidb_embed.api import codec
from akidb_embed.api.errors import ApiError, Code

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON = "application/json"


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=codec.dumps(data), status=status, headers=headers, content_type=JSON)


def error_response(exc: ApiError) -> web.Response:
    return json_response(exc.body(), exc.status, exc.headers)


async def read(request: web.Request, kind: type[T]) -> T:
    """The request body decoded and shape-checked as `kind` (400 otherwise)."""
    return codec.decode(kind, await request.read())


def _from_http(request: web.Request, exc: web.HTTPException, max_body_bytes: int) -> ApiError:
    if exc.status == 413:
        return ApiError(
            Code.PAYLOAD_TOO_LARGE,
            f"the request body is larger than the limit of {max_body_bytes} bytes",
        )
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return ApiError(
            Code.METHOD_NOT_ALLOWED,
            f"method {request.method} is not allowed on {request.path} (allowed: {allow})",
            headers={"Allow": allow},
        )
    return ApiError(Code.ROUTE_NOT_FOUND, f"no route for {request.method} {request.path}")


def errors_middleware(log: logging.Logger, max_body_bytes: int) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(_from_http(request, exc, max_body_bytes))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            log.exception("unexpected error on %s %s", request.method, request.path)
            return error_response(
                ApiError(Code.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
            )

    return middleware
