"""The gateway's aiohttp application: routes, middlewares, lifecycle.

Handlers parse and delegate: bodies are validated by `api`, routing and the cold-start
hold live in `router.Router`, the cluster view in `registry.Registry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from akidb_embed import __version__
from akidb_embed.api import codec
from akidb_embed.api import openapi as api_doc
from akidb_embed.api.errors import ApiError, Code
from akidb_embed.api.http import errors_middleware, json_response
from akidb_embed.api.routes import ROUTES, Route, gateway_routes
from akidb_embed.gateway import api
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.gateway.discovery import ClusterBackend
from akidb_embed.gateway.metrics import Metrics
from akidb_embed.gateway.registry import Registry
from akidb_embed.gateway.router import Router, UpstreamReply
from akidb_embed.k8s import parse_time, to_rfc3339

log = logging.getLogger("akidb_embed.gateway")

# Paths reachable without an API key (probes, metrics, the document).
AUTH_EXEMPT = frozenset(r.path for r in ROUTES if r.open and r.gateway)
DISCOVERY_RESTART_DELAY = 2.0
# Metrics status of a request whose client disconnected first (nginx's convention).
CLIENT_CLOSED = 499
# The largest batch a TEI client is told it may send (the model server's default).
TEI_MAX_CLIENT_BATCH = 2048

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
DOCUMENT = web.AppKey("openapi", bytes)


def auth_middleware(keys: frozenset[str]) -> Any:
    encoded = [k.encode() for k in keys]
    challenge = {"WWW-Authenticate": "Bearer"}

    @web.middleware
    async def check_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in AUTH_EXEMPT:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        if scheme.lower() != "bearer" or not given:
            raise ApiError(
                Code.MISSING_API_KEY,
                "missing API key: send 'Authorization: Bearer <key>'",
                headers=challenge,
            )
        ok = False
        for key in encoded:  # constant time per key; no early exit
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise ApiError(Code.INVALID_API_KEY, "invalid API key", headers=challenge)
        return await handler(request)

    return check_key


def _reply_response(reply: UpstreamReply, target: api.Target, rewrite: bool) -> web.Response:
    headers = {
        "X-Akidb-Pod": reply.pod,
        "X-Akidb-Model": target.model,
        "X-Akidb-Model-Match": target.match,
    }
    if reply.headers:
        headers.update(reply.headers)
    if reply.cold_wait is not None:
        headers["X-Akidb-Cold-Start"] = f"{reply.cold_wait:.3f}"
    if reply.status == 200:
        # The server's bytes go back as they are (only `model` set to the resource name).
        body = api.rewrite_model(reply.body, target.model) if rewrite else reply.body
        headers["Content-Type"] = "application/json"
        return web.Response(body=body, headers=headers)
    # Upstream errors (4xx: the client's mistake) pass through as they are.
    headers["Content-Type"] = reply.content_type
    return web.Response(status=reply.status, body=reply.body, headers=headers)


def model_call(route: Route) -> Handler:
    """Handler of a forwarded route: check the shape, resolve the model, forward as is.

    The client's bytes are forwarded unchanged once they validate (never re-encoded)."""
    assert route.server_path is not None
    path = route.server_path
    rewrite = api.names_model(route)

    async def handle(request: web.Request) -> web.Response:
        gw = request.app[GATEWAY]
        started = time.perf_counter()
        model_label = "-"
        status = 500
        try:
            raw = await request.read()
            requested = api.requested_model(route, raw)
            wanted = requested or api.default_model(gw.registry, route, gw.config.default_model)
            model = gw.router.resolve(wanted)
            model_label = model
            api.check_task(gw.registry, route, model)
            target = api.Target(model, api.match_kind(gw.registry, model, requested))
            reply = await gw.router.call(model, path, raw)
            response = _reply_response(reply, target, rewrite)
            status = response.status
            return response
        except (ApiError, web.HTTPException) as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the client went away; its wait and upstream call end
            raise
        finally:
            took = time.perf_counter() - started if model_label != "-" else None
            gw.metrics.observe_request(route.name, model_label, status, took)

    return handle


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
                "task": state.task,
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
    return json_response({"default_model": gw.config.default_model, "models": models})


async def list_models_openai(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    data = [
        {
            "id": name,
            "object": "model",
            "created": int(gw.registry.models[name].created or 0),
            "owned_by": "akidb-embed",
            "task": gw.registry.models[name].task,
        }
        for name in gw.registry.known_models()
    ]
    return json_response({"object": "list", "data": data})


async def tei_info(request: web.Request) -> web.Response:
    """TEI's /info, for the default model, from its EmbeddingModel (no pod needed)."""
    gw = request.app[GATEWAY]
    model = gw.router.resolve(gw.config.default_model)
    state = gw.registry.models[model]
    spec = state.spec
    kind = (
        {"reranker": {"id2label": {"0": "LABEL_0"}}}
        if state.task == "rerank"
        else {"embedding": {"pooling": str(spec.get("pooling") or "mean")}}
    )
    return json_response(
        {
            "model_id": model,
            "model_type": kind,
            "max_input_length": int(spec.get("maxLength") or 512),
            "max_client_batch_size": TEI_MAX_CLIENT_BATCH,
            "version": __version__,
            "model_dtype": spec.get("precision"),
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.draining:
        return json_response({"status": "draining", "message": "the gateway is shutting down"}, 503)
    if not gw.registry.synced:
        return json_response(
            {"status": "not_ready", "message": "model and pod watches have not synced yet"},
            503,
            {"Retry-After": "1"},
        )
    stale = gw.registry.stale_watches(gw.config.watch_stale_after)
    if stale:
        # A silent watch may be a half-open connection: our view of models and pods
        # can be out of date, so let the Service send traffic to another replica.
        ages = ", ".join(f"{kind} {age:.0f}s" for kind, age in sorted(stale.items()))
        return json_response(
            {
                "status": "not_ready",
                "message": f"watches have not heard from the API server ({ages})",
                "stale_watches": sorted(stale),
            },
            503,
            {"Retry-After": "1"},
        )
    return json_response({"status": "ready", "models": len(gw.registry.models)})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT], content_type="application/json")


HANDLERS: dict[str, Handler] = {
    "tei_info": tei_info,
    "models": list_models,
    "openai_models": list_models_openai,
    "healthz": healthz,
    "readyz": readyz,
    "metrics": metrics,
    "openapi": openapi,
}


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
    middlewares: list[Any] = [errors_middleware(log, config.max_body_bytes)]
    if config.api_keys:
        middlewares.append(auth_middleware(config.api_keys))
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[GATEWAY] = Gateway(config, backend, registry, metrics_, router)
    routes = gateway_routes()
    app[DOCUMENT] = codec.dumps(
        api_doc.document(
            routes, title="akidb-embed gateway", gateway=True, secured=bool(config.api_keys)
        )
    )
    app.cleanup_ctx.append(_lifecycle)
    app.on_response_prepare.append(_close_when_draining)
    for route in routes:
        handler = model_call(route) if route.forwards else HANDLERS[route.name]
        app.router.add_route(route.method, route.path, handler)
    return app


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner every way of serving the gateway uses.

    `handler_cancellation`: a client that disconnects cancels its handler, so a held
    request gives back its waiter slot and its upstream call is closed (aiohttp's
    default lets the handler run on for nobody)."""
    config = app[GATEWAY].config
    return web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=config.cold_start_timeout + 5,
    )


async def serve(config: GatewayConfig, backend: ClusterBackend) -> None:
    """Run until SIGTERM/SIGINT; then report not ready, drain, finish in-flight calls."""
    app = create_app(config, backend)
    runner = make_runner(app)
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
