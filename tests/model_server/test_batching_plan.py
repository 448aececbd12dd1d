"""Batch planning and provider choice: pure functions, no model needed."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from akidb_embed.model_server.batcher import Batcher, QueueFullError, _Item, _Job, plan_batches
from akidb_embed.model_server.engine import choose_providers, parse_providers


def _items(lengths: list[int]) -> list[_Item]:
    job = _Job(seqs=[], future=None, remaining=0)  # type: ignore[arg-type]
    return [_Item(n, i, job, i) for i, n in enumerate(lengths)]


def test_plan_respects_size_and_token_limits_and_sorts() -> None:
    batches = plan_batches(_items([5, 100, 6, 7, 90, 8]), max_batch_size=3, max_batch_tokens=200)
    lengths = [[it.length for it in b] for b in batches]
    # sorted by length, at most 3 texts, texts x longest <= 200
    assert lengths == [[5, 6, 7], [8, 90], [100]]
    for b in batches:
        assert len(b) <= 3 and len(b) * max(it.length for it in b) <= 200


def test_plan_oversized_text_gets_own_batch() -> None:
    batches = plan_batches(_items([10, 500, 10]), max_batch_size=8, max_batch_tokens=64)
    assert [[it.length for it in b] for b in batches] == [[10, 10], [500]]


def test_plan_keeps_every_item_once() -> None:
    rng = np.random.default_rng(0)
    items = _items(list(rng.integers(1, 300, size=200)))
    batches = plan_batches(items, max_batch_size=16, max_batch_tokens=2048)
    seen = sorted(it.order for b in batches for it in b)
    assert seen == list(range(200))


async def test_batcher_splits_reassembles_and_bounds_queue() -> None:
    runs: list[int] = []

    def run(seqs):  # row i = the first token id, so order is checkable
        runs.append(len(seqs))
        return np.array([[float(s[0])] for s in seqs], dtype=np.float32)

    b = Batcher(run, max_batch_size=4, max_batch_tokens=1000, max_queue_texts=12)
    try:
        seqs = [np.array([i] * (1 + (7 * i) % 5), dtype=np.int64) for i in range(10)]
        out = await b.submit(seqs)
        assert out[:, 0].tolist() == list(range(10))
        assert max(runs) <= 4 and sum(runs) == 10
        # Queue bound: fill the queue while a batch runs, the next submit is refused.
        many = [b.submit([np.array([1], dtype=np.int64)] * 6) for _ in range(2)]
        tasks = [asyncio.ensure_future(c) for c in many]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError, match="limit 12"):
            await b.submit([np.array([1], dtype=np.int64)] * 6)
        await asyncio.gather(*tasks)
    finally:
        await b.close()


def test_provider_parsing_and_fallback_reason() -> None:
    assert parse_providers("TensorRT, cuda,CPU") == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(ValueError):
        parse_providers(" , ")
    choice = choose_providers(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider"], ["CPUExecutionProvider"]
    )
    assert choice.selected == ["CPUExecutionProvider"]
    assert "TensorrtExecutionProvider not available in this onnxruntime build" in choice.notes[0]
    assert "added as the last resort" in choice.notes[-1]


def test_plan_padding_ratio_keeps_similar_lengths_together() -> None:
    lengths = [5, 6, 6, 7, 40, 42, 44, 100]
    loose = plan_batches(_items(lengths), max_batch_size=32, max_batch_tokens=10_000)
    assert len(loose) == 1  # without the bound everything pads to 100
    batches = plan_batches(
        _items(lengths), max_batch_size=32, max_batch_tokens=10_000, max_padding_ratio=1.3
    )
    assert [[it.length for it in b] for b in batches] == [[5, 6, 6, 7], [40, 42, 44], [100]]
    for b in batches:
        real = sum(it.length for it in b)
        assert len(b) * max(it.length for it in b) <= 1.3 * real
