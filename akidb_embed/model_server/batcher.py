"""Micro-batching: coalesce concurrent requests into few ONNX Runtime runs.

Requests put their tokenized texts on one queue. A single inference thread takes
everything waiting (up to a window), sorts it by length so similar lengths share a
batch (less padding), cuts it into batches bounded by ``max_batch_size`` texts and
``max_batch_tokens`` padded tokens (texts x longest), runs them, and hands each batch's
rows back to the event loop with ``call_soon_threadsafe``. The event loop stays free to
parse and tokenize the next requests while the model runs, and a request costs one
thread wake-up and one wake-up back (no loop task hop, no executor round trip). There
is no timer: a lone request runs at once; under load, whatever arrived while the
previous batch ran forms the next one.

A request larger than one batch is split and reassembled in order. The queue is
bounded in texts: past the bound, ``submit`` raises ``QueueFullError`` (HTTP 503 with
Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def _length_order(item: _Item) -> tuple[int, int]:
    # A plain key: sorted() on the dataclass's generated __lt__ is ~5x slower.
    return item.length, item.order


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
    for item in sorted(items, key=_length_order):
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
        inline: bool = False,
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
        # Shared with the inference thread: appended on the event loop, taken by the
        # thread, both under _cond.
        self._pending: deque[_Item] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._running: list[_Item] = []  # taken by the thread, not yet answered (for close())
        self._order = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches_run = 0
        # Background work for the inference thread when no request waits (one ORT run
        # per call; returns True to be called again). See run_when_idle.
        self._idle_work: Callable[[], bool] | None = None
        # An ORT run is in progress (on the inference thread, or inline on the loop).
        self._busy = False
        # Run a lone text inline on the loop when the inference thread is idle.
        self.inline = inline

    @property
    def waiting(self) -> int:
        return len(self._pending)

    def run_when_idle(self, work: Callable[[], bool]) -> None:
        """Call ``work()`` on the inference thread whenever no request is waiting.

        Requests always go first: ``work`` runs only with an empty queue, and each call
        should be one short unit (one ORT run), so a request that arrives meanwhile
        waits for at most that unit. It is called again until it returns False (or
        raises). Used for the self-measurement after ready: same thread, same session,
        so it never runs concurrently with a request batch.
        """
        self.start()
        with self._cond:
            self._idle_work = work
            self._cond.notify()

    def _run_idle(self, work: Callable[[], bool]) -> None:
        try:
            more = work()
        except Exception:
            log.exception("background work on the inference thread failed")
            more = False
        if not more:
            with self._cond:
                if self._idle_work is work:
                    self._idle_work = None

    def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._serve, name="akidb-infer", daemon=True)
            self._thread.start()

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
        assert self._loop is not None
        if self.inline and len(seqs) == 1 and not waiting:
            out = self._run_inline(seqs)
            if out is not None:
                return out
        job = _Job(seqs, self._loop.create_future(), remaining=len(seqs))
        order = self._order
        items = [_Item(len(s), order + i, job, i) for i, s in enumerate(seqs)]
        self._order = order + len(seqs)
        with self._cond:
            self._pending.extend(items)
            self._cond.notify()
        return await job.future

    def _run_inline(self, seqs: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.float32] | None:
        """Run a lone text on the event loop's thread when the inference thread is idle.

        With nothing queued nor running there is nothing to batch with; handing the
        text to the inference thread and the result back costs two thread wake-ups.
        None: the inference thread is busy (or has background work); queue instead.
        """
        with self._cond:
            if self._pending or self._busy or self._idle_work is not None:
                return None
            self._busy = True  # the inference thread waits for this run to end
        try:
            t0 = time.perf_counter()
            out = self._run(seqs)
            self.batches_run += 1
            if self.stats.on_batch:
                n = len(seqs[0])
                self.stats.on_batch(1, n, n, time.perf_counter() - t0)
            return out
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify()

    def _serve(self) -> None:
        """The inference thread: take what waits, cut it into batches, run them.

        Batching happens here rather than in an event-loop task so that a request
        costs one thread wake-up and one ``call_soon_threadsafe`` (results back), not
        a loop task hop plus an executor round trip per batch.
        """
        loop = self._loop
        assert loop is not None
        cond, pending = self._cond, self._pending
        while True:
            idle: Callable[[], bool] | None = None
            with cond:
                while self._busy or (not pending and not self._closed and self._idle_work is None):
                    cond.wait()
                if self._closed:
                    return
                if pending:
                    take = min(len(pending), self.window)
                    window = [pending.popleft() for _ in range(take)]
                    self._running = window
                    self._busy = True
                else:  # requests go first; background work only on an empty queue
                    idle = self._idle_work
                    self._busy = True
            if idle is not None:
                try:
                    self._run_idle(idle)
                finally:
                    self._set_idle()
                continue
            if len(window) == 1:
                batches = [window]
            else:
                batches = plan_batches(
                    window, self.max_batch_size, self.max_batch_tokens, self.max_padding_ratio
                )
            for batch in batches:
                if self._closed:  # close() has failed the rest of the window
                    return
                # Reading done() off the loop is a benign race: at worst a request
                # cancelled this instant is still computed, and its row dropped.
                live = [it for it in batch if not it.job.future.done()]
                if not live:
                    continue
                seqs = [it.job.seqs[it.index] for it in live]
                t0 = time.perf_counter()
                try:
                    out = self._run(seqs)
                except Exception as exc:
                    log.exception("inference failed for a batch of %d texts", len(seqs))
                    if not self._post(loop, self._fail, live, exc):
                        return
                    continue
                elapsed = time.perf_counter() - t0
                self.batches_run += 1
                if self.stats.on_batch:
                    tokens = sum(len(s) for s in seqs)
                    padded = len(seqs) * max(len(s) for s in seqs)
                    self.stats.on_batch(len(seqs), tokens, padded, elapsed)
                if not self._post(loop, self._deliver, live, out):
                    return
            self._running = []
            self._set_idle()

    def _set_idle(self) -> None:
        with self._cond:
            self._busy = False

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> bool:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            return False
        return True

    @staticmethod
    def _deliver(items: Sequence[_Item], out: npt.NDArray[np.float32]) -> None:
        """On the loop: copy each row into its request's result; finish complete ones."""
        for r, it in enumerate(items):
            job = it.job
            if job.future.done():
                continue
            if len(job.seqs) == 1:  # the common case: no reassembly, no copy
                job.future.set_result(out[r : r + 1])
                continue
            if job.result is None:
                job.result = np.empty((len(job.seqs), out.shape[1]), dtype=np.float32)
            job.result[it.index] = out[r]
            job.remaining -= 1
            if job.remaining == 0:
                job.future.set_result(job.result)

    @staticmethod
    def _fail(items: Sequence[_Item], exc: BaseException) -> None:
        for it in items:
            if not it.job.future.done():
                it.job.future.set_exception(exc)

    async def close(self) -> None:
        """Stop the inference thread; fail whatever still waits or runs."""
        self._closed = True
        with self._cond:
            left = [*self._pending, *self._running]
            self._pending.clear()
            self._cond.notify()
        self._fail(left, BatcherClosedError("server shutting down"))
        if self._thread is not None:
            # Waits for a batch in progress to end, off the loop.
            await asyncio.to_thread(self._thread.join)
            self._thread = None
