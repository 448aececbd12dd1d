"""The CPU graph, chosen by measurement at conversion.

Measured on all-MiniLM-L6-v2 (torch 2.15, transformers 4.57, ONNX Runtime 1.32, 2 CPU
cores): ONNX Runtime's BERT fusions (``onnxruntime.transformers.optimizer``) find
Attention and EmbedLayerNormalization only in the TorchScript exporter's graph; in the
dynamo exporter's graph they fuse SkipLayerNorm and BiasGelu only. Which graph is
fastest differs by model and machine, so conversion builds the candidates, checks each
against the PyTorch reference (parity) and times them interleaved (a shared, noisy
machine affects all alike), and keeps the fastest that passes.

The winner is saved after ONNX Runtime's own graph optimizations as
``model.ort-cpu.onnx`` (``ArtifactManifest.cpu_model``), so the server loads a graph
that needs no further optimization. ``model.onnx`` stays the portable graph of standard
ops (what TensorRT and CUDA get).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("akidb_embed.conversion")

CPU_MODEL_FILE = "model.ort-cpu.onnx"
# config.model_type values whose encoder ONNX Runtime's "bert" fusions understand.
BERT_LIKE = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "mpnet", "electra"})
TWO_GIB = 2 * 1024**3


@dataclass
class Candidate:
    name: str  # e.g. "torchscript+fusion"
    path: Path
    min_cosine: float = 0.0
    ms: float = 0.0  # median b1 latency + median b16 batch time


def fusable(config: Any) -> bool:
    return str(getattr(config, "model_type", "")) in BERT_LIKE


def export_torchscript(
    model: Any, input_names: list[str], sample: dict[str, Any], out_path: Path, opset: int
) -> None:
    """The TorchScript exporter's graph (dynamic batch and sequence axes)."""
    import torch

    from akidb_embed.conversion.export import OUTPUT_NAME, _wrapper

    wrapper = _wrapper(model, input_names, OUTPUT_NAME)
    args = tuple(torch.from_numpy(sample[n]) for n in input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in [*input_names, OUTPUT_NAME]}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(out_path),
            input_names=input_names,
            output_names=[OUTPUT_NAME],
            opset_version=min(opset, 17),  # TorchScript's BERT path is proven to 17
            dynamo=False,
            dynamic_axes=axes,
        )


def fuse(in_path: Path, out_path: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's transformer fusions (model_type bert); returns the fused op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    root = logging.getLogger()
    level = root.level
    try:
        root.setLevel(max(level, logging.ERROR))  # the optimizer logs every pass
        model = optimize_model(
            str(in_path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,  # fusions only; ONNX Runtime's own passes run at save/load
        )
    finally:
        root.setLevel(level)
    model.save_model_to_file(str(out_path))
    stats = model.get_fused_operator_statistics()
    return {k: int(v) for k, v in stats.items() if v}


def cpu_session(path: Path, optimized_out: Path | None = None, threads: int = 0) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the server
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def save_cpu_graph(path: Path, out_path: Path) -> bool:
    """Write ``path`` after ONNX Runtime's CPU graph optimizations (basic + extended:
    no hardware-specific layouts). False when the graph is too big for one file."""
    if path.stat().st_size >= TWO_GIB or path.with_name(path.name + ".data").exists():
        return False
    cpu_session(path, optimized_out=out_path)
    return True


def time_candidates(
    candidates: Sequence[Candidate], feeds: Sequence[dict[str, np.ndarray]], rounds: int = 5
) -> None:
    """Set each candidate's ``ms``: per feed, the median over interleaved rounds, summed."""
    sessions = [cpu_session(c.path) for c in candidates]
    for s in sessions:
        for f in feeds:
            s.run(None, _fit(s, f))
    times: list[list[list[float]]] = [[[] for _ in feeds] for _ in candidates]
    for _ in range(rounds):
        for ci, s in enumerate(sessions):
            for fi, f in enumerate(feeds):
                feed = _fit(s, f)
                t0 = time.perf_counter()
                s.run(None, feed)
                times[ci][fi].append(time.perf_counter() - t0)
    for c, per_feed in zip(candidates, times, strict=True):
        c.ms = round(sum(float(np.median(t)) for t in per_feed) * 1000.0, 3)


def _fit(session: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = {i.name for i in session.get_inputs()}
    return {k: v for k, v in feed.items() if k in names}


def choose(
    candidates: Sequence[Candidate],
    cosines: Callable[[Path], np.ndarray],
    threshold: float,
    feeds: Sequence[dict[str, np.ndarray]],
) -> tuple[Candidate, dict[str, str]]:
    """The fastest candidate whose parity passes; notes for the manifest."""
    passing = []
    for c in candidates:
        c.min_cosine = float(cosines(c.path).min())
        log.info("graph %s: min cosine %.6f", c.name, c.min_cosine)
        if c.min_cosine >= threshold:
            passing.append(c)
    if not passing:
        raise ValueError("no candidate graph passed parity")
    if len(passing) > 1:
        time_candidates(passing, feeds)
    best = min(passing, key=lambda c: c.ms)
    summary = ", ".join(
        f"{c.name} {c.ms:.2f} ms" if c in passing else f"{c.name} parity {c.min_cosine:.4f}"
        for c in candidates
    )
    log.info("CPU graph: %s (%s)", best.name, summary)
    return best, {"cpu-graph": best.name, "cpu-graph-timings": summary}


def timing_feeds(sample_texts: Callable[[list[str]], dict[str, np.ndarray]]) -> list[Any]:
    """One short text (latency) and a batch of 16 mid-length texts (throughput)."""
    short = ["how do embedding servers batch requests"]
    mid = [
        f"passage {i}: vector search ranks documents by the cosine similarity of their "
        "embeddings with the embedding of the query"
        for i in range(16)
    ]
    return [sample_texts(short), sample_texts(mid)]


def remove(paths: Sequence[Path]) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".data").unlink(missing_ok=True)
