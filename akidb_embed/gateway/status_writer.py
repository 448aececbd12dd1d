"""The gateway's writes to EmbeddingModel status: demand and recency.

- `mark_demand(model)`: `status.requestedAt` = now (the operator activates on it).
- `note_request(model)`: recency in memory (the warm path costs no API call), flushed
  in the background to `status.lastRequestTime`, at most one write per model per
  `recency_flush_interval`. A model counts as flushed only once its write succeeded (a
  failed one is tried again at the next flush), and the write only ever raises the
  stored time, so gateway replicas writing the same model never move it backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any

from akidb_embed.gateway.config import GatewayConfig
from akidb_embed.gateway.discovery import ClusterBackend
from akidb_embed.gateway.metrics import Metrics
from akidb_embed.k8s import to_rfc3339

log = logging.getLogger("akidb_embed.gateway")

PATCH_TIMEOUT = 5.0


class StatusWriter:
    def __init__(self, config: GatewayConfig, backend: ClusterBackend, metrics: Metrics) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics
        self._recent: dict[str, float] = {}
        self._flushed: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_loop(), name="recency-flush")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush_recency()

    def note_request(self, model: str) -> None:
        self._recent[model] = time.time()

    def last_request(self, model: str) -> float | None:
        return self._recent.get(model)

    async def mark_demand(self, model: str) -> bool:
        fields = {"requestedAt": to_rfc3339(time.time())}
        return await self._write("requestedAt", model, self.backend.patch_status(model, fields))

    async def flush_recency(self) -> None:
        """Raise status.lastRequestTime of every model used since its last flush."""
        due = [
            (model, ts)
            for model, ts in list(self._recent.items())
            if ts > self._flushed.get(model, 0.0)
        ]
        field = "lastRequestTime"
        oks = await asyncio.gather(
            *(
                self._write(field, m, self.backend.raise_status_time(m, field, to_rfc3339(ts)))
                for m, ts in due
            )
        )
        for (model, ts), ok in zip(due, oks, strict=True):
            if ok:
                self._flushed[model] = max(ts, self._flushed.get(model, 0.0))

    async def _write(self, what: str, model: str, call: Awaitable[Any]) -> bool:
        try:
            await asyncio.wait_for(call, PATCH_TIMEOUT)
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
