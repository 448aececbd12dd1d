"""The batcher's hand-off between the event loop and its inference thread."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from akidb_embed.model_server.batcher import Batcher, BatcherClosedError


def _seq(value: int, length: int = 3) -> np.ndarray:
    return np.full(length, value, dtype=np.int64)


def _echo(seqs):  # row = the sequence's first token id, so order is checkable
    return np.array([[float(s[0]), float(len(s))] for s in seqs], dtype=np.float32)


async def test_results_come_back_in_order_and_batches_coalesce() -> None:
    calls: list[tuple[str, int]] = []

    def run(seqs):
        calls.append((threading.current_thread().name, len(seqs)))
        return _echo(seqs)

    b = Batcher(run, max_batch_size=4, max_batch_tokens=1000)
    try:
        # Mixed lengths: the batcher sorts by length, results must still be in order.
        reqs = [[_seq(100 * r + i, 1 + (r + i) % 5) for i in range(r % 3 + 1)] for r in range(16)]
        outs = await asyncio.gather(*(b.submit(q) for q in reqs))
        for q, out in zip(reqs, outs, strict=True):
            assert out.dtype == np.float32
            assert out[:, 0].tolist() == [float(s[0]) for s in q]
            assert out[:, 1].tolist() == [float(len(s)) for s in q]
        # Batches run off the event loop; only a lone text finding the thread idle runs
        # inline (on this thread).
        assert {name for name, n in calls if n > 1} == {"akidb-infer"}
        assert {name for name, _ in calls} <= {"akidb-infer", threading.current_thread().name}
        assert max(n for _, n in calls) <= 4
        assert len(calls) < 16, "concurrent requests were not coalesced"
        # A lone request still works (no timer, no waiting for company).
        out = await b.submit([_seq(7)])
        assert out.tolist() == [[7.0, 3.0]]
    finally:
        await b.close()


async def test_a_failing_batch_fails_its_requests_only() -> None:
    def run(seqs):
        if any(s[0] == 13 for s in seqs):
            raise RuntimeError("model exploded")
        return _echo(seqs)

    b = Batcher(run, max_batch_size=1, max_batch_tokens=1000)
    try:
        good, bad = await asyncio.gather(
            b.submit([_seq(1)]), b.submit([_seq(13)]), return_exceptions=True
        )
        assert isinstance(bad, RuntimeError) and "exploded" in str(bad)
        assert isinstance(good, np.ndarray) and good[0, 0] == 1.0
        # The thread survives a failed batch.
        assert (await b.submit([_seq(2)]))[0, 0] == 2.0
    finally:
        await b.close()


async def test_cancelled_request_is_dropped_and_others_finish() -> None:
    started = threading.Event()
    release = threading.Event()
    seen: list[float] = []

    def run(seqs):
        seen.extend(float(s[0]) for s in seqs)
        started.set()
        release.wait(5)
        return _echo(seqs)

    # inline=False: a lone first request goes to the thread, as queued ones do.
    b = Batcher(run, max_batch_size=8, max_batch_tokens=1000, inline=False)
    try:
        first = asyncio.ensure_future(b.submit([_seq(1)]))
        await asyncio.to_thread(started.wait, 5)
        gone = asyncio.ensure_future(b.submit([_seq(2)]))
        kept = asyncio.ensure_future(b.submit([_seq(3)]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while queued
        release.set()
        assert (await first)[0, 0] == 1.0
        assert (await kept)[0, 0] == 3.0
        assert 2.0 not in seen
    finally:
        release.set()
        await b.close()


async def test_close_fails_running_and_waiting_requests() -> None:
    started = threading.Event()
    release = threading.Event()

    def run(seqs):
        started.set()
        release.wait(5)
        return _echo(seqs)

    b = Batcher(run, max_batch_size=1, max_batch_tokens=1000, inline=False)
    running = asyncio.ensure_future(b.submit([_seq(1)]))
    await asyncio.to_thread(started.wait, 5)
    waiting = asyncio.ensure_future(b.submit([_seq(2)]))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(b.close())
    await asyncio.sleep(0.01)
    release.set()
    await closing
    for fut in (running, waiting):
        with pytest.raises(BatcherClosedError):
            await fut
    with pytest.raises(BatcherClosedError):
        await b.submit([_seq(3)])


async def test_a_lone_text_runs_inline_only_when_the_thread_is_idle() -> None:
    names: list[str] = []
    gate = threading.Event()

    def run(seqs):
        names.append(threading.current_thread().name)
        if seqs[0][0] == 1:
            gate.wait(5)  # hold the inference thread busy
        return _echo(seqs)

    b = Batcher(run, max_batch_size=4, max_batch_tokens=1000, inline=True)
    try:
        assert (await b.submit([_seq(5)])).tolist() == [[5.0, 3.0]]
        assert names == [threading.current_thread().name]  # idle: inline
        names.clear()
        busy = asyncio.ensure_future(b.submit([_seq(1), _seq(2)]))  # two texts: the thread
        while not names:
            await asyncio.sleep(0.001)
        lone = asyncio.ensure_future(b.submit([_seq(9)]))  # the thread is busy: queued
        await asyncio.sleep(0.02)
        assert not lone.done()
        gate.set()
        assert (await lone).tolist() == [[9.0, 3.0]]
        await busy
        assert names == ["akidb-infer", "akidb-infer"]
    finally:
        await b.close()

    off = Batcher(_echo, max_batch_size=4, max_batch_tokens=1000, inline=False)
    try:
        await off.submit([_seq(3)])
        assert off._thread is not None and off.batches_run == 1
    finally:
        await off.close()
