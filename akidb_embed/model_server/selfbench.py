"""A short self-measurement of the loaded model on this node (status.performance).

Two phases, each a sequence of single ONNX Runtime runs (``step``), so that the server
can run them on its inference thread *between* requests, after it has turned ready:

1. Latency: up to ``latency_runs`` runs of one typical short query at batch 1
   (p50 / p95 of the model time: padding, ORT run, pooling; no HTTP, no tokenizing).
2. Throughput: up to ``throughput_runs`` runs of typical short documents at batch ``b``:
   texts/s = b / median run time. ``b`` is the server's max batch size, lowered for a
   slow model so that one run stays near ``target_run_s`` (a request that arrives while
   a measurement run is in progress waits for it, so no run may be long).

Bounded: the latency phase stops after ``budget_s * 0.4`` of model time (with at least
``MIN_LATENCY_RUNS`` runs); the throughput phase makes one run, and more only while the
next should still fit ``budget_s``. So the whole takes about ``budget_s`` of model time
at most (plus at most one run of overshoot), however big the model; on a fast model the
run counts bound it instead (~10 ms for a tiny model on a CPU).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

QUERY = "how do I reset my account password?"
DOCUMENTS = (
    "To reset your password, open the sign-in page, choose 'Forgot password' and follow "
    "the link we send to your registered email address.",
    "The quarterly report shows revenue growth of 12 percent, driven mainly by new "
    "customers in the logistics and retail sectors.",
    "Jetson Thor is an embedded computer for robotics with a Blackwell GPU and 128 GB "
    "of unified memory shared by the CPU and the GPU.",
    "Store the vegetables in a cool, dry place and use them within a week; leafy greens "
    "keep longer when wrapped in a damp towel.",
)
MIN_LATENCY_RUNS = 3


class _Engine(Protocol):  # what the measurement needs from model_server.engine.Engine
    providers: list[str]

    def tokenize(
        self, texts: list[str], input_type: str | None = None, truncate: bool = True
    ) -> list[npt.NDArray[np.int64]]: ...

    def run(self, seqs: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class Performance:
    p50_ms: float
    p95_ms: float
    texts_per_second: float
    device: str  # the execution provider that runs the graph
    batch_size: int  # of the throughput runs
    latency_runs: int
    throughput_runs: int
    query_tokens: int
    document_tokens: int  # longest document, i.e. padded length of a throughput run
    duration_s: float  # model time the measurement took (inference-thread time)
    measured_at: float  # epoch seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_ms": round(self.p50_ms, 3),
            "p95_ms": round(self.p95_ms, 3),
            "texts_per_second": round(self.texts_per_second, 1),
            "device": self.device,
            "batch_size": self.batch_size,
            "latency_runs": self.latency_runs,
            "throughput_runs": self.throughput_runs,
            "query_tokens": self.query_tokens,
            "document_tokens": self.document_tokens,
            "duration_s": round(self.duration_s, 3),
            "measured_at": dt.datetime.fromtimestamp(self.measured_at, dt.UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
        }


class SelfBenchmark:
    """One measurement, driven one ORT run at a time by ``step()``."""

    def __init__(
        self,
        engine: _Engine,
        max_batch_size: int = 32,
        latency_runs: int = 20,
        throughput_runs: int = 3,
        budget_s: float = 1.0,
        target_run_s: float = 0.25,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.engine = engine
        self.max_batch_size = max(1, max_batch_size)
        self.latency_runs = max(MIN_LATENCY_RUNS, latency_runs)
        self.throughput_runs = max(1, throughput_runs)
        self.budget_s = budget_s
        self.target_run_s = target_run_s
        self.clock = clock
        self._query = engine.tokenize([QUERY], "query")
        self._doc_tokens = max(len(d) for d in engine.tokenize(list(DOCUMENTS), "document"))
        self._docs: list[npt.NDArray[np.int64]] = []
        self.latencies: list[float] = []
        self.batch_times: list[float] = []
        self.batch_size = 0
        self.throughput_total = 0  # throughput runs at every batch size tried
        self.spent = 0.0
        self._result: Performance | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def _timed(self, seqs: list[npt.NDArray[np.int64]]) -> float:
        t0 = self.clock()
        self.engine.run(seqs)
        elapsed = self.clock() - t0
        self.spent += elapsed
        return elapsed

    def _latency_done(self) -> bool:
        n = len(self.latencies)
        return n >= self.latency_runs or (
            n >= MIN_LATENCY_RUNS and self.spent >= 0.4 * self.budget_s
        )

    def _set_batch(self, size: int) -> None:
        self.batch_size = max(1, min(self.max_batch_size, size))
        texts = [DOCUMENTS[i % len(DOCUMENTS)] for i in range(self.batch_size)]
        self._docs = self.engine.tokenize(texts, "document")
        self.batch_times = []  # texts/s is measured at one batch size: the last one

    def _start_throughput(self) -> None:
        # First guess: a document costs the query's time scaled by its length and batch
        # time grows linearly (a CPU's worst case), so the first run stays near the target.
        per_text = float(np.median(self.latencies)) * self._doc_tokens / len(self._query[0])
        fit = math.floor(self.target_run_s / per_text) if per_text > 0 else self.max_batch_size
        self._set_batch(fit)

    def _grow(self, elapsed: float) -> bool:
        """After a size's first run: go bigger if it was well under the target."""
        if self.batch_size >= self.max_batch_size or elapsed >= self.target_run_s / 2:
            return False
        size = max(self.batch_size * 2, math.floor(self.batch_size * self.target_run_s / elapsed))
        size = min(self.max_batch_size, size)
        predicted = elapsed * size / self.batch_size  # linear: pessimistic
        if self.spent + predicted > self.budget_s:
            return False
        self._set_batch(size)
        return True

    def step(self) -> bool:
        """Run one ORT run of the measurement; False when it is complete."""
        if self._result is not None:
            return False
        if not self._latency_done():
            self.latencies.append(self._timed(self._query))
            return True
        if self.batch_size == 0:
            self._start_throughput()
        if not self.batch_times or self._another_batch():
            elapsed = self._timed(self._docs)
            self.batch_times.append(elapsed)
            self.throughput_total += 1
            if len(self.batch_times) == 1 and self._grow(elapsed):
                return True  # the new size's first run comes next (it fits the budget)
            if self._another_batch():
                return True
        self._result = self._summarize()
        return False

    def _another_batch(self) -> bool:
        """Another run at this size if the counts allow it and it should fit the budget."""
        return (
            len(self.batch_times) < self.throughput_runs
            and self.throughput_total < 2 * self.throughput_runs + 4
            and self.spent + self.batch_times[-1] <= self.budget_s
        )

    def run(self) -> Performance:
        """The whole measurement at once (tests, scripts)."""
        while self.step():
            pass
        assert self._result is not None
        return self._result

    @property
    def result(self) -> Performance | None:
        return self._result

    def _summarize(self) -> Performance:
        lat = np.asarray(self.latencies) * 1000.0
        return Performance(
            p50_ms=float(np.percentile(lat, 50)),
            p95_ms=float(np.percentile(lat, 95)),
            texts_per_second=self.batch_size / float(np.median(self.batch_times)),
            device=self.engine.providers[0],
            batch_size=self.batch_size,
            latency_runs=len(self.latencies),
            throughput_runs=len(self.batch_times),
            query_tokens=len(self._query[0]),
            document_tokens=max(len(d) for d in self._docs),
            duration_s=self.spent,
            measured_at=time.time(),
        )
