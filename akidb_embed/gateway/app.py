"""The gateway's aiohttp application: routes, middlewares, lifecycle.

Handlers parse and delegate: bodies are validated by `api`, routing and the cold-start
hold live in `router.Router`, the cluster view in `registry.Registry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from akidb_embed.gateway import api
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.gateway.discovery import ClusterBackend
from akidb_embed.gateway.errors import GatewayError, error_response
from akidb_embed.gateway.metrics import Metrics
from akidb_embed.gateway.openapi import openapi_document
from akidb_embed.gateway.registry import Registry
from akidb_embed.gateway.router import Router, UpstreamReply
from akidb_embed.k8s import parse_time, to_rfc3339

log = logging.getLogger("akidb_embed.gateway")

# Paths reachable without an API key.
AUTH_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
DISCOVERY_RESTART_DELAY = 2.0

Parser = Callable[[dict[str, Any]], tuple[str | None, dict[str, Any]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Gateway:
    config: GatewayConfig
    backend: ClusterBackend
    registry: Registry
    metrics: Metrics
    router: Router
    draining: bool = False
    discovery: asyncio.Task[None] | None = field(default=None)


GATEWAY = web.AppKey("gateway", Gateway)

_STATUS_TYPES = {
    400: "invalid_request_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return exc.response()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[GATEWAY].config.max_body_bytes
        return error_response(
            413, "request_too_large", f"the request body is larger than {limit} bytes"
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        message = exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        return error_response(
            exc.status, _STATUS_TYPES.get(exc.status, "error"), message, headers=headers
        )
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


def auth_middleware(keys: frozenset[str]) -> Any:
    encoded = [k.encode() for k in keys]

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in AUTH_EXEMPT:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not given:
            raise GatewayError(
                401,
                "authentication_error",
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        ok = False
        for key in encoded:  # constant time per key; no early exit
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise GatewayError(
                401,
                "authentication_error",
                "invalid API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    return check_key


def _reply_response(reply: UpstreamReply, model: str) -> web.Response:
    headers = {"X-Akidb-Pod": reply.pod, **reply.headers}
    if reply.cold_wait is not None:
        headers["X-Akidb-Cold-Start"] = f"{reply.cold_wait:.3f}"
    if reply.status == 200:
        return web.Response(
            body=api.rewrite_model(reply.body, model),
            content_type="application/json",
            headers=headers,
        )
    # Upstream errors (4xx: the client's mistake) pass through as they are.
    return web.Response(
        status=reply.status,
        body=reply.body,
        headers={**headers, "Content-Type": reply.content_type},
    )


async def _embed(request: web.Request, api_name: str, parse: Parser, path: str) -> web.Response:
    gw = request.app[GATEWAY]
    started = time.perf_counter()
    model_label = "-"
    status = 500
    try:
        body = api.load_json_object(await request.read())
        name, upstream = parse(body)
        model = gw.router.resolve(name)
        model_label = model
        reply = await gw.router.call(model, path, upstream)
        response = _reply_response(reply, model)
        status = response.status
        return response
    except GatewayError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        gw.metrics.requests.labels(api_name, model_label, str(status)).inc()
        if model_label != "-":
            gw.metrics.latency.labels(model_label).observe(time.perf_counter() - started)


async def embed_native(request: web.Request) -> web.Response:
    return await _embed(request, "native", api.parse_native, "/embed")


async def embed_openai(request: web.Request) -> web.Response:
    return await _embed(request, "openai", api.parse_openai, "/v1/embeddings")


def _time(value: float | None) -> str | None:
    return to_rfc3339(value) if value is not None else None


async def list_models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    models = []
    for name in gw.registry.known_models():
        state = gw.registry.models[name]
        status = state.status
        last = max(
            (
                t
                for t in (parse_time(status.get("lastRequestTime")), gw.router.last_request(name))
                if t is not None
            ),
            default=None,
        )
        models.append(
            {
                "name": name,
                "aliases": state.aliases,
                "default": name == gw.registry.resolve(gw.config.default_model),
                "dimension": state.dimension,
                "matryoshka_dimensions": state.matryoshka_dimensions,
                "phase": state.phase,
                "reason": state.reason,
                "message": state.message,
                "pinned": state.pinned,
                "ready_pods": len(gw.registry.ready_pods(name)),
                "waiting_requests": gw.router.waiting(name),
                "last_request_time": _time(last),
                "requested_at": status.get("requestedAt"),
                "active_since": status.get("activeSince"),
                "performance": status.get("performance"),
                "artifact": status.get("artifact"),
            }
        )
    return web.json_response({"default_model": gw.config.default_model, "models": models})


async def list_models_openai(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = [
        {
            "id": name,
            "object": "model",
            "created": int(gw.registry.models[name].created or 0),
            "owned_by": "akidb-embed",
        }
        for name in gw.registry.known_models()
    ]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.draining:
        return error_response(503, "draining", "the gateway is shutting down")
    if not gw.registry.synced:
        return error_response(503, "not_ready", "model and pod watches have not synced yet")
    return web.json_response({"status": "ready", "models": len(gw.registry.models)})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


_OPENAPI = json.dumps(openapi_document()).encode()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_OPENAPI, content_type="application/json")


async def _run_discovery(gw: Gateway) -> None:
    while True:
        try:
            await gw.backend.run(gw.registry)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discovery stopped; restarting in %.0fs", DISCOVERY_RESTART_DELAY)
            await asyncio.sleep(DISCOVERY_RESTART_DELAY)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    await gw.router.start()
    gw.discovery = asyncio.create_task(_run_discovery(gw), name="discovery")
    yield
    gw.discovery.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gw.discovery
    await gw.router.close()


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    # While draining, tell keep-alive clients to reconnect (to another replica) now,
    # rather than finding their idle connection closed when this one stops.
    if request.app[GATEWAY].draining:
        response.force_close()
        response.headers["Connection"] = "close"


def create_app(config: GatewayConfig, backend: ClusterBackend) -> web.Application:
    registry = Registry()
    metrics_ = Metrics()
    router = Router(config, registry, backend, metrics_)
    middlewares: list[Any] = [error_middleware]
    if config.api_keys:
        middlewares.append(auth_middleware(config.api_keys))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[GATEWAY] = Gateway(config, backend, registry, metrics_, router)
    app.cleanup_ctx.append(_lifecycle)
    app.on_response_prepare.append(_close_when_draining)
    app.router.add_post("/api/v1/embed", embed_native)
    app.router.add_get("/api/v1/models", list_models)
    app.router.add_post("/v1/embeddings", embed_openai)
    app.router.add_get("/v1/models", list_models_openai)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    return app


async def serve(config: GatewayConfig, backend: ClusterBackend) -> None:
    """Run until SIGTERM/SIGINT; then report not ready, drain, finish in-flight calls."""
    app = create_app(config, backend)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=config.cold_start_timeout + 5)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    log.info(
        "gateway listening on %s:%d (namespace %s)", config.host, config.port, config.namespace
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping: draining for %.1fs", config.drain_seconds)
        app[GATEWAY].draining = True
        await asyncio.sleep(config.drain_seconds)
    finally:
        await runner.cleanup()
