"""Micro-batching: coalesce concurrent requests into few ONNX Runtime runs.

Requests put their tokenized texts on one queue. A single worker task takes everything
waiting (up to a window), sorts it by length so similar lengths share a batch (less
padding), cuts it into batches bounded by ``max_batch_size`` texts and
``max_batch_tokens`` padded tokens (texts x longest), and runs each batch on an
inference thread, so the event loop stays free to parse and tokenize the next
requests while the model runs. There is no timer: a lone request runs at once; under
load, whatever arrived while the previous batch ran forms the next one.

A request larger than one batch is split and reassembled in order. The queue is
bounded in texts: past the bound, ``submit`` raises ``QueueFullError`` (HTTP 503 with
Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

log = logging.getLogger("akidb_embed.model_server.batcher")

RunFn = Callable[[Sequence[npt.NDArray[np.int64]]], npt.NDArray[np.float32]]


class QueueFullError(Exception):
    def __init__(self, waiting: int, limit: int) -> None:
        super().__init__(f"server busy: {waiting} texts waiting (limit {limit}); retry shortly")
        self.waiting = waiting
        self.limit = limit


class BatcherClosedError(Exception):
    pass


@dataclass
class _Job:
    seqs: Sequence[npt.NDArray[np.int64]]
    future: asyncio.Future[npt.NDArray[np.float32]]
    result: npt.NDArray[np.float32] | None = None
    remaining: int = 0


@dataclass(order=True)
class _Item:
    length: int
    order: int
    job: _Job = field(compare=False)
    index: int = field(compare=False)


@dataclass
class BatchStats:
    """Hooks the HTTP layer uses for metrics (no prometheus import here)."""

    on_batch: Callable[[int, int, int, float], None] | None = None  # texts, tokens, padded, s
    on_queue: Callable[[int], None] | None = None


def plan_batches(
    items: Sequence[_Item],
    max_batch_size: int,
    max_batch_tokens: int,
    max_padding_ratio: float | None = None,
) -> list[list[_Item]]:
    """Cut length-sorted items into batches within the limits.

    ``max_padding_ratio`` bounds padded tokens (texts x longest) over real tokens: a
    batch is cut where adding the next (longer) text would pad past it. On a CPU the
    cost of a batch is its padded size, so mixing a 5-token and a 100-token text costs
    more than running them apart. A single text longer than ``max_batch_tokens`` still
    gets a batch of its own.
    """
    batches: list[list[_Item]] = []
    current: list[_Item] = []
    longest = 0
    real = 0
    for item in sorted(items):
        new_longest = max(longest, item.length)
        padded = new_longest * (len(current) + 1)
        too_padded = max_padding_ratio is not None and padded > max_padding_ratio * (
            real + item.length
        )
        if current and (
            len(current) + 1 > max_batch_size or padded > max_batch_tokens or too_padded
        ):
            batches.append(current)
            current, new_longest, real = [], item.length, 0
        current.append(item)
        longest = new_longest
        real += item.length
    if current:
        batches.append(current)
    return batches


class Batcher:
    def __init__(
        self,
        run: RunFn,
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        max_queue_texts: int = 4096,
        window_batches: int = 4,
        stats: BatchStats | None = None,
        max_padding_ratio: float | None = None,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or max_queue_texts < 1:
            raise ValueError("batch and queue limits must be positive")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_texts = max_queue_texts
        self.max_padding_ratio = max_padding_ratio
        self.window = max_batch_size * max(1, window_batches)
        self.stats = stats or BatchStats()
        self._pending: deque[_Item] = deque()
        self._order = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="akidb-infer")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches_run = 0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._worker(), name="batcher")

    async def submit(self, seqs: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
        """Pooled embeddings for ``seqs`` (token ids), in order."""
        if self._closed:
            raise BatcherClosedError("batcher is closed")
        if not seqs:
            raise ValueError("nothing to embed")
        waiting = len(self._pending)
        # An empty queue always admits a request (max_texts_per_request bounds its size).
        if waiting and waiting + len(seqs) > self.max_queue_texts:
            raise QueueFullError(waiting, self.max_queue_texts)
        self.start()
        loop = asyncio.get_running_loop()
        job = _Job(seqs, loop.create_future(), remaining=len(seqs))
        for i, s in enumerate(seqs):
            self._order += 1
            self._pending.append(_Item(len(s), self._order, job, i))
        self._report_queue()
        self._wakeup.set()
        return await job.future

    def _report_queue(self) -> None:
        if self.stats.on_queue:
            self.stats.on_queue(len(self._pending))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            take = min(len(self._pending), self.window)
            window = [self._pending.popleft() for _ in range(take)]
            self._report_queue()
            for batch in plan_batches(
                window, self.max_batch_size, self.max_batch_tokens, self.max_padding_ratio
            ):
                live = [it for it in batch if not it.job.future.done()]
                if not live:
                    continue
                seqs = [it.job.seqs[it.index] for it in live]
                t0 = time.perf_counter()
                try:
                    out = await loop.run_in_executor(self._executor, self._run, seqs)
                except asyncio.CancelledError:
                    self._fail(live, BatcherClosedError("server shutting down"))
                    raise
                except Exception as exc:
                    log.exception("inference failed for a batch of %d texts", len(seqs))
                    self._fail(live, exc)
                    continue
                elapsed = time.perf_counter() - t0
                self.batches_run += 1
                if self.stats.on_batch:
                    tokens = sum(len(s) for s in seqs)
                    padded = len(seqs) * max(len(s) for s in seqs)
                    self.stats.on_batch(len(seqs), tokens, padded, elapsed)
                for row, it in zip(out, live, strict=True):
                    job = it.job
                    if job.future.done():
                        continue
                    if job.result is None:
                        job.result = np.empty((len(job.seqs), out.shape[1]), dtype=np.float32)
                    job.result[it.index] = row
                    job.remaining -= 1
                    if job.remaining == 0:
                        job.future.set_result(job.result)

    @staticmethod
    def _fail(items: Sequence[_Item], exc: BaseException) -> None:
        for it in items:
            if not it.job.future.done():
                it.job.future.set_exception(exc)

    async def close(self) -> None:
        """Stop the worker; fail whatever still waits; free the inference thread."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._pending:
            it = self._pending.popleft()
            if not it.job.future.done():
                it.job.future.set_exception(BatcherClosedError("server shutting down"))
        self._executor.shutdown(wait=True)
