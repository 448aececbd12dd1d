"""The per-model cold-start hold: one waiter per cold model, shared by its requests.

`ColdStarts.acquire(model, deadline)` returns a ready pod at once when there is one.
Otherwise one `_ColdStart` per model (a task and a future every waiting request shares)
marks demand (`status.requestedAt`) once, re-marks it periodically while requests
wait, probes the /readyz of a Running-but-not-Ready pod every `probe_interval` (to
forward before the kubelet's probe period notices), and resolves the future with the
first ready pod. Waiting is capped per model (503 + Retry-After) and bounded in time
(504). A waiter that leaves (its client disconnected) gives back its place; a cold
start nobody waits for any more is dropped. Nothing here is global: a cold model never
delays another model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from akidb_embed.api.errors import ApiError, Code
from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.gateway.metrics import Metrics
from akidb_embed.gateway.registry import FAILED, ModelState, PodState, Registry
from akidb_embed.gateway.status_writer import StatusWriter
from akidb_embed.gateway.upstream import Upstream

log = logging.getLogger("akidb_embed.gateway")


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


class ColdStarts:
    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry,
        metrics: Metrics,
        upstream: Upstream,
        status: StatusWriter,
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.upstream = upstream
        self.status = status
        self._starts: dict[str, _ColdStart] = {}

    def waiting(self, model: str) -> int:
        cold = self._starts.get(model)
        return cold.waiters if cold is not None else 0

    def active(self) -> list[str]:
        """Models with a cold start under way."""
        return list(self._starts)

    def close(self) -> None:
        for cold in list(self._starts.values()):
            if cold.task is not None:
                cold.task.cancel()

    async def acquire(self, model: str, deadline: float) -> tuple[PodState, float | None]:
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
        cold = self._starts.get(model)
        if cold is None:
            cold = _ColdStart(model, loop.create_future(), loop.time())
            # Mark the exception retrieved even when every waiter has gone.
            cold.future.add_done_callback(lambda f: None if f.cancelled() else f.exception())
            self._starts[model] = cold
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
                if self._starts.get(model) is cold:
                    del self._starts[model]
        return pod, loop.time() - started

    def _phase(self, model: str) -> str:
        state = self.registry.models.get(model)
        return state.phase if state else "deleted"

    async def _run_cold(self, cold: _ColdStart) -> None:
        model, registry, loop = cold.model, self.registry, asyncio.get_running_loop()
        self.metrics.cold_starts.labels(model).inc()
        log.info("model %s is cold: marking demand and holding requests", model)
        try:
            await self.status.mark_demand(model)
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
                    oks = await asyncio.gather(*(self.upstream.probe(p) for p in candidates))
                    for candidate, ok in zip(candidates, oks, strict=True):
                        if ok:
                            registry.mark_probed_ready(candidate.name)
                    pod = registry.pick_ready(model)
                    if pod is not None:
                        break
                now = loop.time()
                if now - last_mark >= self.config.demand_refresh_interval:
                    await self.status.mark_demand(model)
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
            if self._starts.get(model) is cold:
                del self._starts[model]
