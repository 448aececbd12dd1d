"""The CPU graph chosen at conversion: candidates, parity, the choice, the saved file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from akidb_embed.artifact import MODEL_FILE, ArtifactManifest
from akidb_embed.conversion.export import load_model
from akidb_embed.conversion.graphs import (
    CPU_MODEL_FILE,
    Candidate,
    choose,
    export_torchscript,
    fuse,
)

from .helpers import TEXTS, artifact_embed, row_cosines

pytestmark = pytest.mark.slow

CANDIDATES = ("dynamo", "dynamo+fusion", "torchscript+fusion")


def test_minilm_cpu_graph_saved_measured_and_matching(
    minilm_artifact: Path, minilm_checkpoint: Path
):
    from sentence_transformers import SentenceTransformer

    m = ArtifactManifest.load(minilm_artifact)
    assert m.cpu_model == CPU_MODEL_FILE and CPU_MODEL_FILE in m.files
    assert m.tool_versions["converter"] == "2"
    # Every candidate was built, passed parity and was timed; the fastest was kept.
    timings = m.tool_versions["cpu-graph-timings"]
    ms = {name: float(timings.split(f"{name} ")[1].split(" ms")[0]) for name in CANDIDATES}
    assert m.tool_versions["cpu-graph"] == min(ms, key=lambda n: ms[n])
    st = SentenceTransformer(str(minilm_checkpoint), device="cpu")
    expected = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = artifact_embed(minilm_artifact, TEXTS, graph=CPU_MODEL_FILE)
    assert row_cosines(expected, got).min() >= 0.999
    # The saved graph is ONNX Runtime's optimized one: fused ops, not the portable graph.
    ops = {n.op_type for n in onnx.load(str(minilm_artifact / CPU_MODEL_FILE)).graph.node}
    assert ops & {"SkipLayerNormalization", "Attention", "BiasGelu", "FusedMatMul"}
    portable = {n.op_type for n in onnx.load(str(minilm_artifact / MODEL_FILE)).graph.node}
    assert not portable & {"SkipLayerNormalization", "Attention"}


def test_int8_cpu_graph(minilm_int8_artifact: Path):
    m = ArtifactManifest.load(minilm_int8_artifact)
    assert m.cpu_model == CPU_MODEL_FILE
    assert m.parity is not None and m.parity.min_cosine >= 0.99
    ops = {n.op_type for n in onnx.load(str(minilm_int8_artifact / CPU_MODEL_FILE)).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat"}


def test_torchscript_graph_fuses_attention(tiny_bert_checkpoint: Path, tmp_path: Path):
    model, names = load_model(tiny_bert_checkpoint)
    rng = np.random.default_rng(0)
    sample = {n: rng.integers(1, 100, size=(2, 7)).astype(np.int64) for n in names}
    sample["attention_mask"] = np.ones((2, 7), dtype=np.int64)
    if "token_type_ids" in sample:
        sample["token_type_ids"] = np.zeros((2, 7), dtype=np.int64)
    export_torchscript(model, names, sample, tmp_path / "ts.onnx", 18)
    stats = fuse(tmp_path / "ts.onnx", tmp_path / "fused.onnx", 2, 32)
    assert stats.get("Attention", 0) == 2 and stats.get("SkipLayerNormalization", 0) >= 2


def test_choose_keeps_the_fastest_that_passes(tiny_bert_artifact: Path):
    graph = tiny_bert_artifact / MODEL_FILE
    feeds = [
        {
            "input_ids": np.ones((1, 5), dtype=np.int64),
            "attention_mask": np.ones((1, 5), dtype=np.int64),
            "token_type_ids": np.zeros((1, 5), dtype=np.int64),
        }
    ]
    good, bad = Candidate("good", graph), Candidate("bad", graph.with_name("bad.onnx"))

    def cosines(path: Path) -> np.ndarray:  # the parity edge is faked; timing is real
        return np.array([0.5 if path.name == "bad.onnx" else 1.0])

    best, notes = choose([bad, good], cosines, 0.999, feeds)
    assert best is good and notes["cpu-graph"] == "good"
    assert "bad parity 0.5000" in notes["cpu-graph-timings"]
    with pytest.raises(ValueError, match="no candidate"):
        choose([bad], cosines, 0.999, feeds)
