"""The model server's HTTP application (aiohttp).

Handlers parse (``api.py``) and delegate to ``ModelServer.embed`` (tokenize -> batcher
-> post-process). ``ModelServer`` also owns the lifecycle: loading (``/readyz`` 503),
ready, draining after SIGTERM (``/readyz`` and new work 503, in-flight work finishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from akidb_embed import __version__
from akidb_embed.api import encoding, openapi, responses
from akidb_embed.api import types as t
from akidb_embed.api.errors import ApiError, Code
from akidb_embed.api.http import errors_middleware, json_response, read
from akidb_embed.api.limits import ModelLimits
from akidb_embed.api.names import model_aliases
from akidb_embed.api.routes import Route, server_routes
from akidb_embed.model_server.batcher import (
    Batcher,
    BatcherClosedError,
    BatchStats,
    QueueFullError,
)
from akidb_embed.model_server.engine import Engine, TextTooLongError
from akidb_embed.model_server.pooling import truncate_dims
from akidb_embed.model_server.selfbench import Performance, SelfBenchmark

log = logging.getLogger("akidb_embed.model_server")

# Texts with fewer characters than this are tokenized on the event loop; larger
# requests go to a tokenizer thread so one big request does not stall the others.
INLINE_TOKENIZE_CHARS = 8192


@dataclass
class ServerSettings:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    # Padded over real tokens allowed in one batch (see batcher.plan_batches).
    max_padding_ratio: float = 1.3
    max_texts_per_request: int = 2048
    max_queue_texts: int = 8192
    max_body_bytes: int = 16 * 1024 * 1024
    drain_timeout: float = 30.0
    retry_after_s: int = 1
    # Measure p50/p95/texts-per-second after turning ready, between requests (/info).
    self_benchmark: bool = True
    # A lone text with the inference thread idle runs on the event loop (batcher.py).
    inline_single: bool = False


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "akidb_model_server_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "akidb_model_server_request_seconds",
            "HTTP request latency",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.queue_depth = Gauge(
            "akidb_model_server_queue_depth", "texts waiting for a batch", registry=r
        )
        self.in_flight = Gauge(
            "akidb_model_server_in_flight_requests", "embedding requests in progress", registry=r
        )
        self.batch_size = Histogram(
            "akidb_model_server_batch_size",
            "texts per ONNX Runtime run",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.tokens = Counter("akidb_model_server_tokens", "prompt tokens embedded", registry=r)
        self.padded_tokens = Counter(
            "akidb_model_server_padded_tokens",
            "tokens fed to the model including padding",
            registry=r,
        )
        self.inference = Histogram(
            "akidb_model_server_inference_seconds",
            "time of one ONNX Runtime run (padding, run, pooling)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.ready = Gauge("akidb_model_server_ready", "1 when serving", registry=r)
        self.measured_latency = Gauge(
            "akidb_model_server_measured_latency_seconds",
            "self-measured model time of one short query at batch 1, after warm-up",
            ["quantile"],
            registry=r,
        )
        self.measured_throughput = Gauge(
            "akidb_model_server_measured_texts_per_second",
            "self-measured throughput at the measurement's batch size",
            ["batch_size"],
            registry=r,
        )
        self.info = Gauge(
            "akidb_model_server_model_info",
            "the served model",
            ["model", "precision", "provider"],
            registry=r,
        )

        # Label lookups take a lock and hash the labels: do them once per label set.
        self._requests_by: dict[tuple[str, int], Any] = {}
        self._latency_by: dict[str, Any] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        counter = self._requests_by.get((endpoint, status))
        if counter is None:
            counter = self._requests_by[endpoint, status] = self.requests.labels(
                endpoint, str(status)
            )
        counter.inc()
        latency = self._latency_by.get(endpoint)
        if latency is None:
            latency = self._latency_by[endpoint] = self.latency.labels(endpoint)
        latency.observe(seconds)

    def on_batch(self, texts: int, tokens: int, padded: int, seconds: float) -> None:
        self.batch_size.observe(texts)
        self.tokens.inc(tokens)
        self.padded_tokens.inc(padded)
        self.inference.observe(seconds)


@dataclass
class EmbedResult:
    embeddings: npt.NDArray[np.float32]  # float, after truncation and normalization
    prompt_tokens: int
    vectors: Any  # in the requested output type


@dataclass
class RerankResult:
    scores: npt.NDArray[np.float32]  # per document, in request order
    tokens: int


def model_limits(engine: Engine, max_inputs: int) -> ModelLimits:
    m = engine.manifest
    names = [a.name for a in model_aliases(engine.name, m.source, m.catalog_id or None)]
    if m.name.lower() not in {n.lower() for n in names}:
        names.append(m.name)
    encodings = [e for e in t.ENCODING_FORMATS if e not in t.CALIBRATED_ENCODINGS or m.quantization]
    return ModelLimits(
        names=names,
        task=m.task,
        dimensions=m.allowed_dimensions(),
        vocab_size=engine.vocab_size,
        max_inputs=max_inputs,
        encodings=encodings,
    )


class ModelServer:
    """State shared by the handlers: engine, batcher, metrics, lifecycle."""

    def __init__(
        self,
        settings: ServerSettings | None = None,
        engine: Engine | None = None,
        loader: Callable[[], Engine] | None = None,
    ) -> None:
        if engine is None and loader is None:
            raise ValueError("give an engine or a loader")
        self.settings = settings or ServerSettings()
        self.engine = engine
        self._loader = loader
        self.metrics = Metrics()
        self.state = "loading"
        self.failure: str | None = None
        self.batcher: Batcher | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self._limits: ModelLimits | None = None
        self.started = time.time()
        self.loaded = asyncio.Event()
        # Self-measurement: "off" | "pending" (waiting to start) | "running" | "done" |
        # "failed" | "skipped" (drained before it finished).
        self.performance: Performance | None = None
        self.self_benchmark = "pending" if self.settings.self_benchmark else "off"
        self.measured = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------

    async def load(self) -> None:
        """Load (unless given an engine), warm up, start batching, turn ready.

        On failure the state becomes "failed" and the exception propagates.
        """
        loop = asyncio.get_running_loop()
        try:
            if self.engine is None:
                assert self._loader is not None
                self.engine = await loop.run_in_executor(None, self._loader)
                log.info(
                    "loaded %s from %s in %.2fs",
                    self.engine.name,
                    self.engine.artifact_dir,
                    self.engine.load_seconds,
                )
            engine = self.engine
            if not engine.warmed:
                await loop.run_in_executor(None, engine.warmup, self.settings.max_batch_size)
                log.info("warm-up took %.2fs", engine.warmup_seconds)
        except Exception as exc:
            self.state = "failed"
            self.failure = str(exc)
            if self.self_benchmark == "pending":
                self.self_benchmark = "skipped"
            self.measured.set()
            self.loaded.set()
            raise
        s = self.settings
        self.batcher = Batcher(
            engine.run,
            max_batch_size=s.max_batch_size,
            max_batch_tokens=s.max_batch_tokens,
            max_queue_texts=s.max_queue_texts,
            max_padding_ratio=s.max_padding_ratio,
            inline=s.inline_single,
            # Queue depth and in-flight gauges are read at scrape time (handle_metrics),
            # not updated per request: each update takes a lock.
            stats=BatchStats(on_batch=self.metrics.on_batch),
        )
        self.batcher.start()
        self._tokenize_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="akidb-tok")
        self.metrics.info.labels(engine.name, engine.manifest.precision, engine.providers[0]).set(1)
        if self.state == "loading":
            self.state = "ready"
            self.metrics.ready.set(1)
        log.info(
            "ready: model %s, provider %s, dimension %d",
            engine.name,
            engine.providers[0],
            engine.dimension,
        )
        self.loaded.set()
        if self.self_benchmark == "pending":
            self._start_self_benchmark(engine, self.batcher)
        else:
            self.measured.set()

    def _start_self_benchmark(self, engine: Engine, batcher: Batcher) -> None:
        """Measure on the inference thread, one ORT run at a time, between requests.

        After ready rather than before: it adds nothing to the cold start (the gateway
        holds requests until ready), and a request never waits for more than one
        measurement run (requests go first, runs are kept short).
        """
        loop = asyncio.get_running_loop()
        try:
            bench = SelfBenchmark(engine, max_batch_size=self.settings.max_batch_size)
        except Exception as exc:
            log.warning("self-measurement could not start: %s", exc)
            self.self_benchmark = "failed"
            self.measured.set()
            return
        self.self_benchmark = "running"

        def finish(state: str, perf: Performance | None = None) -> None:  # on the loop
            self.self_benchmark = state
            if perf is not None:
                self.performance = perf
                self.metrics.measured_latency.labels("0.5").set(perf.p50_ms / 1000)
                self.metrics.measured_latency.labels("0.95").set(perf.p95_ms / 1000)
                self.metrics.measured_throughput.labels(str(perf.batch_size)).set(
                    perf.texts_per_second
                )
                log.info(
                    "self-measurement: p50 %.2f ms, p95 %.2f ms (batch 1, %d runs), "
                    "%.0f texts/s (batch %d) on %s; %.2fs of inference time",
                    perf.p50_ms,
                    perf.p95_ms,
                    perf.latency_runs,
                    perf.texts_per_second,
                    perf.batch_size,
                    perf.device,
                    perf.duration_s,
                )
            self.measured.set()

        def post(state: str, perf: Performance | None = None) -> None:
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed
                loop.call_soon_threadsafe(finish, state, perf)

        def step() -> bool:  # on the inference thread
            if self.state != "ready":
                post("skipped")
                return False
            try:
                more = bench.step()
            except Exception as exc:
                log.warning("self-measurement failed: %s", exc)
                post("failed")
                return False
            if not more:
                post("done", bench.result)
            return more

        batcher.run_when_idle(step)

    def begin_drain(self) -> None:
        if self.state != "draining":
            log.info("draining: %d requests in flight", self._in_flight)
        self.state = "draining"
        self.metrics.ready.set(0)

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """True when no embedding request is in flight (within ``timeout``)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self._tokenize_pool is not None:
            self._tokenize_pool.shutdown(wait=False)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- work ----------------------------------------------------------------------

    def limits(self) -> ModelLimits:
        """The served model's limits (fixed once loaded; still known while draining)."""
        if self._limits is None:
            engine = self._require_engine()
            self._limits = model_limits(engine, self.settings.max_texts_per_request)
        return self._limits

    def _require_engine(self) -> Engine:
        if self.state == "draining":
            raise self._unavailable(
                Code.DRAINING, "server is shutting down; retry on another replica"
            )
        if self.state == "failed":
            raise ApiError(Code.LOADING, f"model failed to load: {self.failure}")
        if self.engine is None or self.state != "ready":
            raise self._unavailable(Code.LOADING, "model is loading; retry shortly")
        return self.engine

    def _unavailable(self, code: Code, message: str) -> ApiError:
        return ApiError(code, message, headers={"Retry-After": str(self.settings.retry_after_s)})

    async def _run(
        self, tokenize: Callable[[], list[npt.NDArray[np.int64]]], chars: int
    ) -> tuple[npt.NDArray[np.float32], int]:
        """Tokenize (on a thread when large), run through the batcher: (rows, tokens)."""
        assert self.batcher is not None
        self._in_flight += 1
        self._idle.clear()
        try:
            if chars <= INLINE_TOKENIZE_CHARS:
                seqs = tokenize()
            else:
                loop = asyncio.get_running_loop()
                seqs = await loop.run_in_executor(self._tokenize_pool, tokenize)
            try:
                rows = await self.batcher.submit(seqs)
            except QueueFullError as exc:
                raise self._unavailable(Code.OVERLOADED, str(exc)) from exc
            except BatcherClosedError as exc:
                raise self._unavailable(Code.DRAINING, str(exc)) from exc
        except TextTooLongError as exc:
            raise ApiError(Code.TEXT_TOO_LONG, str(exc)) from exc
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        return rows, int(sum(len(s) for s in seqs))

    async def embed(self, call: t.EmbedCall) -> EmbedResult:
        engine = self._require_engine()
        self.limits().check_embed(call)
        if call.texts is not None:
            texts = call.texts
            pooled, tokens = await self._run(
                lambda: engine.tokenize(texts, call.input_type, call.truncate),
                sum(map(len, texts)),
            )
        else:
            ids = call.token_ids or []
            pooled, tokens = await self._run(
                lambda: engine.token_ids(ids, call.truncate), sum(map(len, ids))
            )
        normalize = engine.manifest.normalize if call.normalize is None else call.normalize
        out = truncate_dims(pooled, call.dimensions, normalize)
        vectors = encoding.encode(
            out, call.encoding, engine.quantization_ranges(out.shape[1], normalize)
        )
        return EmbedResult(out, tokens, vectors)

    async def rerank(self, call: t.RerankCall) -> RerankResult:
        engine = self._require_engine()
        self.limits().check_rerank(call)
        logits, tokens = await self._run(
            lambda: engine.tokenize_pairs(call.query, call.documents, call.truncate),
            len(call.query) * len(call.documents) + sum(map(len, call.documents)),
        )
        scores = logits[:, 0] if call.raw_scores else 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return RerankResult(np.asarray(scores, dtype=np.float32), tokens)

    def tokenize(self, call: t.TokenizeCall) -> list[list[dict[str, Any]]]:
        engine = self._require_engine()
        return engine.tokens(call.texts, call.input_type, call.add_special_tokens)

    def info(self) -> dict[str, Any]:
        import onnxruntime
        import tokenizers

        engine = self.engine
        batching = asdict(self.settings)
        batching.pop("self_benchmark", None)
        data: dict[str, Any] = {
            "state": self.state,
            "model": None if engine is None else engine.summary(),
            "batching": batching,
            "uptime_s": round(time.time() - self.started, 3),
            "versions": {
                "akidb_embed": __version__,
                "onnxruntime": onnxruntime.__version__,
                "tokenizers": tokenizers.__version__,
                "numpy": np.__version__,
                "aiohttp": _aiohttp_version(),
                "python": platform.python_version(),
            },
        }
        if engine is not None:
            choice = engine.provider_choice
            data["providers"] = {
                "in_use": engine.providers,
                "requested": choice.requested,
                "available": choice.available,
                "notes": choice.notes,
            }
            data["load_s"] = round(engine.load_seconds, 3)
            data["warmup_s"] = round(engine.warmup_seconds, 3)
        data["self_benchmark"] = self.self_benchmark
        data["performance"] = None if self.performance is None else self.performance.to_dict()
        if self.failure:
            data["failure"] = self.failure
        return data


def _aiohttp_version() -> str:
    import aiohttp

    return aiohttp.__version__


# -- HTTP ----------------------------------------------------------------------------

SERVER_KEY = web.AppKey("model_server", ModelServer)


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    server = request.app[SERVER_KEY]
    resource = request.match_info.route.resource
    t0 = time.perf_counter()
    response = await handler(request)
    if resource is not None:
        server.metrics.observe_request(
            resource.canonical, response.status, time.perf_counter() - t0
        )
    return response


async def handle_embed(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    req = await read(request, t.EmbedRequest)
    server.limits().check_model(req.model)
    result = await server.embed(req.call())
    return json_response(
        responses.embed(
            server.limits().name,
            int(result.embeddings.shape[1]),
            req.encoding_format,
            result.vectors,
            result.prompt_tokens,
        )
    )


async def handle_openai(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    req = await read(request, t.OpenAIEmbeddingRequest)
    server.limits().check_model(req.model)
    result = await server.embed(req.call())
    return json_response(
        responses.openai_embeddings(server.limits().name, result.vectors, result.prompt_tokens)
    )


async def handle_tei_embed(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    req = await read(request, t.TeiEmbedRequest)
    server.limits().check_model(req.model)
    return json_response((await server.embed(req.call())).vectors)


async def handle_rerank(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    req = await read(request, t.RerankRequest)
    server.limits().check_model(req.model)
    call = req.call()
    result = await server.rerank(call)
    return json_response(
        responses.rerank(
            server.limits().name,
            result.scores,
            call.documents,
            call.top_n,
            req.return_documents,
            result.tokens,
        )
    )


async def handle_tei_rerank(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    req = await read(request, t.TeiRerankRequest)
    server.limits().check_model(req.model)
    result = await server.rerank(req.call())
    return json_response(responses.tei_rerank(result.scores, req.texts, req.return_text))


async def handle_tokenize(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    req = await read(request, t.TokenizeRequest)
    server.limits().check_model(req.model)
    return json_response(server.tokenize(req.call()))


async def handle_models(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    engine = server.engine
    models = []
    if engine is not None:
        models.append(
            {
                "id": engine.name,
                "object": "model",
                "created": int(server.started),
                "owned_by": "akidb-embed",
                "task": engine.task,
                "dimension": engine.dimension,
                "dimensions": engine.manifest.allowed_dimensions(),
                "max_length": engine.max_length,
                "ready": server.state == "ready",
            }
        )
    return json_response(responses.models_list(models))


async def handle_healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    if server.state == "ready":
        return json_response({"status": "ready"})
    body: dict[str, Any] = {"status": server.state}
    if server.failure:
        body["message"] = server.failure
    return json_response(body, 503, {"Retry-After": str(server.settings.retry_after_s)})


async def handle_metrics(request: web.Request) -> web.Response:
    server = request.app[SERVER_KEY]
    if server.batcher is not None:
        server.metrics.queue_depth.set(server.batcher.waiting)
    server.metrics.in_flight.set(server.in_flight)
    return web.Response(
        body=generate_latest(server.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def handle_info(request: web.Request) -> web.Response:
    return json_response(request.app[SERVER_KEY].info())


async def handle_openapi(request: web.Request) -> web.Response:
    """This server's document: its task's routes, narrowed to its model's limits."""
    server = request.app[SERVER_KEY]
    limits = server.limits() if server.state == "ready" else None
    routes = server_routes(limits.task if limits else None)
    return json_response(
        openapi.document(routes, title="akidb-embed model server", gateway=False, limits=limits)
    )


HANDLERS: dict[str, Any] = {
    "embed": handle_embed,
    "openai_embeddings": handle_openai,
    "tei_embed": handle_tei_embed,
    "rerank": handle_rerank,
    "tei_rerank": handle_tei_rerank,
    "tokenize": handle_tokenize,
    "openai_models": handle_models,
    "server_info": handle_info,
    "healthz": handle_healthz,
    "readyz": handle_readyz,
    "metrics": handle_metrics,
    "openapi": handle_openapi,
}


def _add_routes(app: web.Application, routes: list[Route]) -> None:
    for route in routes:
        assert route.server_path is not None
        app.router.add_route(route.method, route.server_path, HANDLERS[route.name])


def create_app(server: ModelServer, load_on_startup: bool = True) -> web.Application:
    """The aiohttp application for ``server``.

    With ``load_on_startup`` the app loads (or, given an engine, warms) the model in
    the background when it starts; ``/readyz`` answers 503 until that is done.
    """
    limit = server.settings.max_body_bytes
    app = web.Application(
        client_max_size=limit,
        middlewares=[_metrics_middleware, errors_middleware(log, limit)],
    )
    app[SERVER_KEY] = server
    # Every route of every task: a call of the other task gets a clear `wrong_task`.
    _add_routes(app, server_routes(None))

    async def on_startup(app: web.Application) -> None:
        if load_on_startup:
            task = asyncio.get_running_loop().create_task(_load_logged(server))
            app[_LOAD_TASK] = task

    async def on_cleanup(app: web.Application) -> None:
        task = app.get(_LOAD_TASK)
        if task is not None and not task.done():
            task.cancel()
        await server.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


_LOAD_TASK = web.AppKey("load_task", asyncio.Task)


async def _load_logged(server: ModelServer) -> None:
    try:
        await server.load()
    except Exception as exc:
        log.error("model failed to load: %s", exc)


# -- running -------------------------------------------------------------------------


async def serve(
    server: ModelServer,
    host: str,
    port: int,
    stop: asyncio.Event,
    access_log: bool = False,
    on_listening: Callable[[int], None] | None = None,
) -> int:
    """Serve until ``stop`` is set or loading fails; drain; return the exit code.

    Exit code 0 after a drain, 1 when the model failed to load.
    """
    app = create_app(server, load_on_startup=False)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sockets = [s for s in getattr(site._server, "sockets", []) or []]
    bound = sockets[0].getsockname()[1] if sockets else port
    log.info("listening on http://%s:%d", host, bound)
    if on_listening:
        on_listening(bound)
    load = asyncio.get_running_loop().create_task(server.load())
    stopper = asyncio.get_running_loop().create_task(stop.wait())
    try:
        await asyncio.wait({load, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if load.done() and load.exception() is not None:
            print(f"akidb-embed serve: {load.exception()}", file=sys.stderr)
            return 1
        await stopper
        server.begin_drain()
        t0 = time.perf_counter()
        drained = await server.wait_idle(server.settings.drain_timeout)
        if drained:
            log.info("drained in %.2fs", time.perf_counter() - t0)
        else:
            log.warning(
                "drain timeout %.0fs passed with %d requests in flight; stopping",
                server.settings.drain_timeout,
                server.in_flight,
            )
        return 0
    finally:
        for task in (load, stopper):
            if not task.done():
                task.cancel()
        await runner.cleanup()
