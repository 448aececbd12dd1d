"""The self-measurement behind status.performance: real engine, bounded, in /info."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from akidb_embed.model_server.app import ModelServer, ServerSettings, create_app
from akidb_embed.model_server.engine import Engine
from akidb_embed.model_server.selfbench import MIN_LATENCY_RUNS, SelfBenchmark


@pytest.fixture(scope="module")
def engine(tiny_bert_artifact: Path) -> Engine:
    eng = Engine(tiny_bert_artifact, threads=1)
    eng.warmup(8)
    return eng


def test_measures_a_real_engine_quickly(engine: Engine) -> None:
    t0 = time.perf_counter()
    perf = SelfBenchmark(engine, max_batch_size=8).run()
    wall = time.perf_counter() - t0
    assert wall < 1.5  # bounded by its 1 s budget; a tiny model needs milliseconds
    assert 0 < perf.p50_ms <= perf.p95_ms
    assert perf.texts_per_second > 0
    assert perf.device == "CPUExecutionProvider" == engine.providers[0]
    assert 1 <= perf.batch_size <= 8
    assert MIN_LATENCY_RUNS <= perf.latency_runs <= 20 and perf.throughput_runs >= 1
    assert perf.query_tokens > 3 and perf.document_tokens > perf.query_tokens
    assert 0 < perf.duration_s <= wall
    data = perf.to_dict()
    assert set(data) >= {"p50_ms", "p95_ms", "texts_per_second", "device", "measured_at"}
    measured = dt.datetime.fromisoformat(data["measured_at"].replace("Z", "+00:00"))
    assert abs(measured.timestamp() - time.time()) < 60


class _SlowEngine:
    """A "big model" on a fake clock: 0.3 s per text-token-ish, no real work."""

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def __init__(self, per_run_s: float, per_text_s: float) -> None:
        self.now = 0.0
        self.per_run_s = per_run_s
        self.per_text_s = per_text_s
        self.sizes: list[int] = []

    def clock(self) -> float:
        return self.now

    def tokenize(self, texts: Any, input_type: Any = None, truncate: bool = True) -> Any:
        return [np.arange(10 if input_type == "query" else 30, dtype=np.int64) for _ in texts]

    def run(self, seqs: Any) -> Any:
        self.sizes.append(len(seqs))
        self.now += self.per_run_s + self.per_text_s * len(seqs)
        return np.zeros((len(seqs), 4), dtype=np.float32)


def test_a_slow_model_stays_within_budget_with_short_runs() -> None:
    slow = _SlowEngine(per_run_s=0.15, per_text_s=0.05)  # 0.2 s per query
    bench = SelfBenchmark(slow, max_batch_size=32, budget_s=1.0, clock=slow.clock)  # type: ignore[arg-type]
    perf = bench.run()
    assert perf.latency_runs == MIN_LATENCY_RUNS  # the budget cut it, not the count
    assert perf.duration_s <= 1.0 + 0.25 + 0.2  # budget + at most one run of overshoot
    assert max(slow.sizes) * 0.05 + 0.15 <= 0.5  # no run long enough to stall a request
    assert perf.device == "CUDAExecutionProvider"


def test_a_fast_model_grows_to_the_max_batch() -> None:
    fast = _SlowEngine(per_run_s=0.002, per_text_s=0.0005)
    perf = SelfBenchmark(fast, max_batch_size=64, clock=fast.clock).run()  # type: ignore[arg-type]
    assert perf.batch_size == 64 and perf.throughput_runs == 3
    assert perf.texts_per_second == pytest.approx(64 / (0.002 + 64 * 0.0005))
    assert perf.latency_runs == 20


async def test_server_reports_it_after_ready_in_info_and_metrics(
    aiohttp_client: Any, engine: Engine
) -> None:
    server = ModelServer(ServerSettings(max_batch_size=8), engine=engine)
    client = await aiohttp_client(create_app(server))
    await asyncio.wait_for(server.loaded.wait(), 60)
    assert server.state == "ready"
    # Requests are served while (and after) it measures.
    resp = await client.post("/embed", json={"texts": ["hello", "world"]})
    assert resp.status == 200
    await asyncio.wait_for(server.measured.wait(), 10)
    info = await (await client.get("/info")).json()
    assert info["self_benchmark"] == "done"
    perf = info["performance"]
    assert perf["p50_ms"] > 0 and perf["p95_ms"] >= perf["p50_ms"]
    assert perf["texts_per_second"] > 0 and perf["device"] == "CPUExecutionProvider"
    assert "self_benchmark" not in info["batching"]
    metrics = await (await client.get("/metrics")).text()
    assert 'akidb_model_server_measured_latency_seconds{quantile="0.5"}' in metrics
    assert 'akidb_model_server_measured_latency_seconds{quantile="0.95"}' in metrics
    assert "akidb_model_server_measured_texts_per_second{batch_size=" in metrics
    # Measurement runs are not request batches.
    assert "akidb_model_server_batch_size_count 1.0" in metrics


async def test_off_by_setting(aiohttp_client: Any, engine: Engine) -> None:
    server = ModelServer(ServerSettings(self_benchmark=False), engine=engine)
    client = await aiohttp_client(create_app(server))
    await asyncio.wait_for(server.loaded.wait(), 60)
    info = await (await client.get("/info")).json()
    assert info["self_benchmark"] == "off" and info["performance"] is None
