"""Routing of embedding calls to model-server pods: warm path, cold-start hold, retry.

- Warm: a ready pod of the model is in the registry -> forward over the shared pooled
  keep-alive session; recency is noted in memory and flushed to
  `status.lastRequestTime` in the background, at most one patch per model per interval.
- Cold: one `_ColdStart` per model (a task and a future every waiting request shares):
  it marks demand (`status.requestedAt`) once, re-marks it periodically while requests
  wait, probes the /readyz of a Running-but-not-Ready pod every `probe_interval` (to
  forward before the kubelet's probe period notices), and resolves the future with the
  first ready pod. Waiting is capped per model (503 + Retry-After) and bounded in time
  (504). Nothing here is global: a cold model never delays another model.
- A pod that fails mid-request (connection error, reset, 503 draining/loading) is marked
  suspect and the call is retried once on another ready pod or after re-activation.
- A pod that answers 503 `overloaded` (its queue is full) is busy, not dead: it is not
  marked suspect and nothing is re-activated; the call backs off and is retried (on
  the least loaded ready pod) for up to `busy_retry_seconds`, then the 503 goes to the
  client with the server's Retry-After.
- A client that disconnects cancels its handler (the runner's `handler_cancellation`):
  its waiter slot is released and its upstream call is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from akidb_embed.api import codec
from akidb_embed.api.errors import ApiError, Code
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.gateway.discovery import ClusterBackend
from akidb_embed.gateway.metrics import Metrics
from akidb_embed.gateway.registry import FAILED, ModelState, PodState, Registry
from akidb_embed.k8s import to_rfc3339

log = logging.getLogger("akidb_embed.gateway")

JSON_HEADERS = {"Content-Type": "application/json"}
PATCH_TIMEOUT = 5.0
PROBE_TIMEOUT = 0.5
CONNECT_TIMEOUT = 2.0


@dataclass
class UpstreamReply:
    status: int
    body: bytes
    content_type: str
    pod: str
    headers: dict[str, str] = field(default_factory=dict)
    cold_wait: float | None = None


BUSY_BACKOFF_START = 0.02
BUSY_BACKOFF_MAX = 0.25


class _Busy(Exception):
    """The pod answered 503 `overloaded`: alive, its queue full. Retry later, elsewhere."""

    def __init__(self, reply: UpstreamReply) -> None:
        super().__init__("upstream overloaded")
        self.reply = reply


def _is_overloaded(body: bytes) -> bool:
    """Whether a model server's 503 body carries the contract's `overloaded` code."""
    try:
        data = codec.loads(body)
    except ValueError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    return isinstance(error, dict) and error.get("code") == Code.OVERLOADED


class _Retryable(Exception):
    """The pod failed in a way that another pod (or a fresh one) may not."""

    def __init__(self, error: ApiError | None = None, reply: UpstreamReply | None = None):
        super().__init__(error.message if error else "upstream unavailable")
        self.error = error
        self.reply = reply

    def final(self) -> UpstreamReply:
        if self.reply is not None:
            self.reply.headers.setdefault("Retry-After", "1")
            return self.reply
        assert self.error is not None
        raise self.error


@dataclass
class _ColdStart:
    model: str
    future: asyncio.Future[PodState]
    started: float
    waiters: int = 0
    task: asyncio.Task[None] | None = None


def model_failed_error(state: ModelState) -> ApiError:
    detail = state.message or "no message given"
    reason = f" ({state.reason})" if state.reason else ""
    return ApiError(
        Code.MODEL_FAILED,
        f"model {state.name!r} is in phase Failed{reason}: {detail}",
        details={"model": state.name, "phase": state.phase, "reason": state.reason},
    )


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry,
        backend: ClusterBackend,
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.registry = registry
        self.backend = backend
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None
        self._cold: dict[str, _ColdStart] = {}
        self._recent: dict[str, float] = {}
        self._flushed: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=config.upstream_timeout, sock_connect=CONNECT_TIMEOUT
        )
        self._probe_timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.config.max_connections_per_pod,
            keepalive_timeout=60,
            ttl_dns_cache=None,
        )
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, auto_decompress=False
        )
        self._flusher = asyncio.create_task(self._flush_loop(), name="recency-flush")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for cold in list(self._cold.values()):
            if cold.task is not None:
                cold.task.cancel()
        await self.flush_recency()
        if self.session is not None:
            await self.session.close()

    # -- names -----------------------------------------------------------------------

    def resolve(self, name: str | None) -> str:
        """EmbeddingModel name for a requested model name (default when None)."""
        if not self.registry.synced:
            raise ApiError(
                Code.NOT_READY,
                "the gateway has not synced its model list yet; retry shortly",
                headers={"Retry-After": "1"},
            )
        wanted = name or self.config.default_model
        resolved = self.registry.resolve(wanted)
        if resolved is None:
            known = self.registry.known_models()
            raise ApiError(
                Code.MODEL_NOT_FOUND,
                f"unknown model {wanted!r}; known models: {', '.join(known) or '(none)'}",
                details={"known_models": known},
            )
        return resolved

    def last_request(self, model: str) -> float | None:
        return self._recent.get(model)

    def waiting(self, model: str) -> int:
        cold = self._cold.get(model)
        return cold.waiters if cold is not None else 0

    # -- the call -----------------------------------------------------------------------

    async def call(self, model: str, path: str, body: bytes) -> UpstreamReply:
        """Forward one (idempotent) model call (a JSON body) for `model`, holding it while cold."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.cold_start_timeout
        pod, waited = await self._acquire(model, deadline)
        try:
            reply = await self._send_patiently(model, pod, path, body)
        except _Retryable as first:
            self.registry.mark_suspect(pod.name)
            self.metrics.retries.labels(model).inc()
            log.warning("pod %s of %s failed (%s); retrying once", pod.name, model, first)
            # A re-activation gets a fresh cold-start budget.
            deadline = max(deadline, loop.time() + self.config.cold_start_timeout)
            pod, waited_again = await self._acquire(model, deadline)
            if waited is not None or waited_again is not None:
                waited = (waited or 0.0) + (waited_again or 0.0)
            try:
                reply = await self._send_patiently(model, pod, path, body)
            except _Retryable as second:
                self.registry.mark_suspect(pod.name)
                reply = second.final()
        if reply.status < 500:
            self._recent[model] = time.time()
        reply.cold_wait = waited
        return reply

    async def _send_patiently(
        self, model: str, pod: PodState, path: str, body: bytes
    ) -> UpstreamReply:
        """`_send`, retrying while the pods of `model` are busy (503 overloaded): at once
        on a ready pod that has not said so yet, else after a back-off on the least
        loaded one; past `busy_retry_seconds` the last busy answer is the reply."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.config.busy_retry_seconds
        backoff = BUSY_BACKOFF_START
        busy_pods: set[str] = set()
        while True:
            try:
                return await self._send(model, pod, path, body)
            except _Busy as busy:
                self.metrics.upstream_errors.labels(model, "overloaded").inc()
                busy_pods.add(pod.name)
                other = self.registry.pick_ready(model, avoid=frozenset(busy_pods))
                if other is not None:
                    pod = other
                    continue
                if loop.time() + backoff > give_up:
                    busy.reply.headers.setdefault("Retry-After", "1")
                    return busy.reply
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BUSY_BACKOFF_MAX)
            busy_pods.clear()
            pod = self.registry.pick_ready(model) or pod

    async def _acquire(self, model: str, deadline: float) -> tuple[PodState, float | None]:
        """A ready pod of `model`, and how long we waited for it (None when warm)."""
        pod = self.registry.pick_ready(model)
        if pod is not None:
            return pod, None
        state = self.registry.models.get(model)
        if state is None:
            raise ApiError(Code.MODEL_NOT_FOUND, f"model {model!r} no longer exists")
        if state.phase == FAILED:
            raise model_failed_error(state)
        loop = asyncio.get_running_loop()
        cold = self._cold.get(model)
        if cold is None:
            cold = _ColdStart(model, loop.create_future(), loop.time())
            # Mark the exception retrieved even when every waiter has gone.
            cold.future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            self._cold[model] = cold
            cold.task = asyncio.create_task(self._run_cold(cold), name=f"cold-start-{model}")
        if cold.waiters >= self.config.max_waiting_per_model:
            raise ApiError(
                Code.OVERLOADED,
                f"too many requests are waiting for model {model!r} to start "
                f"(limit {self.config.max_waiting_per_model}); retry later",
                headers={"Retry-After": str(self.config.retry_after_seconds)},
            )
        cold.waiters += 1
        gauge = self.metrics.waiting.labels(model)
        gauge.inc()
        started = loop.time()
        try:
            pod = await asyncio.wait_for(
                asyncio.shield(cold.future), timeout=max(0.0, deadline - started)
            )
        except TimeoutError:
            raise ApiError(
                Code.COLD_START_TIMEOUT,
                f"model {model!r} did not become ready within "
                f"{self.config.cold_start_timeout:g}s (phase {self._phase(model)})",
            ) from None
        finally:
            cold.waiters -= 1
            gauge.dec()
            if cold.waiters == 0 and not cold.future.done():
                # Nobody waits any more: stop this cold start (a later request starts
                # a fresh one, with a fresh demand mark).
                cold.future.cancel()
                if cold.task is not None:
                    cold.task.cancel()
                if self._cold.get(model) is cold:
                    del self._cold[model]
        return pod, loop.time() - started

    def _phase(self, model: str) -> str:
        state = self.registry.models.get(model)
        return state.phase if state else "deleted"

    async def _run_cold(self, cold: _ColdStart) -> None:
        model, registry, loop = cold.model, self.registry, asyncio.get_running_loop()
        self.metrics.cold_starts.labels(model).inc()
        log.info("model %s is cold: marking demand and holding requests", model)
        try:
            await self._mark_demand(model)
            last_mark = loop.time()
            while True:
                changed = registry.changed(model)
                pod = registry.pick_ready(model)
                if pod is not None:
                    break
                state = registry.models.get(model)
                if state is None:
                    raise ApiError(Code.MODEL_NOT_FOUND, f"model {model!r} was deleted")
                if state.phase == FAILED:
                    raise model_failed_error(state)
                candidates = registry.probe_candidates(model)
                if candidates:
                    oks = await asyncio.gather(*(self._probe(p) for p in candidates))
                    for candidate, ok in zip(candidates, oks, strict=True):
                        if ok:
                            registry.mark_probed_ready(candidate.name)
                    pod = registry.pick_ready(model)
                    if pod is not None:
                        break
                now = loop.time()
                if now - last_mark >= self.config.demand_refresh_interval:
                    await self._mark_demand(model)
                    last_mark = now
                probing = candidates or registry.has_suspects(model)
                wait = self.config.probe_interval if probing else 1.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
            took = loop.time() - cold.started
            self.metrics.cold_start_seconds.labels(model).observe(took)
            log.info("model %s ready on pod %s after %.3fs", model, pod.name, took)
            if not cold.future.done():
                cold.future.set_result(pod)
        except asyncio.CancelledError:
            cold.future.cancel()
            raise
        except ApiError as exc:
            if not cold.future.done():
                cold.future.set_exception(exc)
        except Exception as exc:  # a bug; still answer the waiters
            log.exception("cold start of %s failed", model)
            if not cold.future.done():
                cold.future.set_exception(
                    ApiError(Code.UPSTREAM_ERROR, f"cold start of {model!r} failed: {exc!r}")
                )
        finally:
            if self._cold.get(model) is cold:
                del self._cold[model]

    async def _probe(self, pod: PodState) -> bool:
        assert self.session is not None
        try:
            async with self.session.get(pod.url("/readyz"), timeout=self._probe_timeout) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _send(self, model: str, pod: PodState, path: str, body: bytes) -> UpstreamReply:
        assert self.session is not None
        inflight = self.registry.inflight
        inflight[pod.name] = inflight.get(pod.name, 0) + 1
        try:
            async with self.session.post(pod.url(path), data=body, headers=JSON_HEADERS) as resp:
                data = await resp.read()
                reply = UpstreamReply(
                    status=resp.status,
                    body=data,
                    content_type=resp.headers.get("Content-Type") or "application/json",
                    pod=pod.name,
                )
                retry_after = resp.headers.get("Retry-After")
                if retry_after:
                    reply.headers["Retry-After"] = retry_after
        except aiohttp.ConnectionTimeoutError as exc:
            self.metrics.upstream_errors.labels(model, "connect").inc()
            raise _Retryable(_unavailable(model, pod, exc)) from exc
        except TimeoutError as exc:
            self.metrics.upstream_errors.labels(model, "timeout").inc()
            raise ApiError(
                Code.UPSTREAM_TIMEOUT,
                f"pod {pod.name} of model {model!r} did not answer within "
                f"{self.config.upstream_timeout:g}s",
            ) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            self.metrics.upstream_errors.labels(model, "connect").inc()
            raise _Retryable(_unavailable(model, pod, exc)) from exc
        finally:
            count = inflight.get(pod.name, 1) - 1
            if count > 0:
                inflight[pod.name] = count
            else:
                inflight.pop(pod.name, None)
        if reply.status == 503:
            if _is_overloaded(reply.body):
                raise _Busy(reply)
            self.metrics.upstream_errors.labels(model, "unavailable").inc()
            raise _Retryable(reply=reply)
        return reply

    # -- status writes ----------------------------------------------------------------

    async def _patch(self, model: str, fields: dict[str, Any], what: str) -> bool:
        try:
            await asyncio.wait_for(self.backend.patch_status(model, fields), PATCH_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.status_patches.labels(what, "error").inc()
            log.warning("could not patch status.%s of %s: %r", what, model, exc)
            return False
        self.metrics.status_patches.labels(what, "ok").inc()
        return True

    async def _mark_demand(self, model: str) -> None:
        await self._patch(model, {"requestedAt": to_rfc3339(time.time())}, "requestedAt")

    async def flush_recency(self) -> None:
        """Raise status.lastRequestTime of every model used since its last flush.

        A model counts as flushed only once its write succeeded (a failed one is tried
        again at the next flush), and the write only ever raises the stored time, so
        gateway replicas writing the same model never move it backwards."""
        due = [
            (model, ts)
            for model, ts in list(self._recent.items())
            if ts > self._flushed.get(model, 0.0)
        ]
        oks = await asyncio.gather(*(self._raise_recency(m, ts) for m, ts in due))
        for (model, ts), ok in zip(due, oks, strict=True):
            if ok:
                self._flushed[model] = max(ts, self._flushed.get(model, 0.0))

    async def _raise_recency(self, model: str, ts: float) -> bool:
        what = "lastRequestTime"
        try:
            await asyncio.wait_for(
                self.backend.raise_status_time(model, what, to_rfc3339(ts)), PATCH_TIMEOUT
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.metrics.status_patches.labels(what, "error").inc()
            log.warning("could not patch status.%s of %s: %r", what, model, exc)
            return False
        self.metrics.status_patches.labels(what, "ok").inc()
        return True

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.recency_flush_interval)
            try:
                await self.flush_recency()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recency flush failed")


def _unavailable(model: str, pod: PodState, exc: BaseException) -> ApiError:
    return ApiError(
        Code.UPSTREAM_UNAVAILABLE,
        f"pod {pod.name} of model {model!r} failed: {type(exc).__name__}: {exc}",
    )
