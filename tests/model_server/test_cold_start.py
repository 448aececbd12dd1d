"""Cold start: the saved CPU graph is what loads, only read files are verified, the
warm-up covers every batch shape corner, and `serve` imports nothing it does not need."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from akidb_embed.artifact import MANIFEST_FILE, MODEL_FILE, ArtifactError
from akidb_embed.conversion.graphs import CPU_MODEL_FILE
from akidb_embed.model_server.engine import CPU_WARMUP_MAX_TOKENS, Engine
from akidb_embed.model_server.runner import ServerProcess, http_get

pytestmark = pytest.mark.slow


def _copy(artifact: Path, tmp_path: Path) -> Path:
    out = tmp_path / "artifact"
    shutil.copytree(artifact, out)
    return out


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_cpu_engine_loads_the_saved_graph_and_verifies_only_it(
    tiny_bert_artifact: Path, tmp_path: Path
):
    art = _copy(tiny_bert_artifact, tmp_path)
    _flip_byte(art / MODEL_FILE)  # the portable graph is not read on a CPU
    engine = Engine(art, providers="CPU")
    assert engine.model_file == CPU_MODEL_FILE
    assert engine.summary()["graph"] == CPU_MODEL_FILE
    assert engine.embed(["hello"]).shape == (1, engine.dimension)
    _flip_byte(art / CPU_MODEL_FILE)
    with pytest.raises(ArtifactError, match="corrupt"):
        Engine(art, providers="CPU")
    # Truncated (ONNX Runtime could not parse it): the error names the corruption.
    graph = art / CPU_MODEL_FILE
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="is corrupt: digest"):
        Engine(art, providers="CPU")


def test_artifact_without_cpu_graph_still_loads(tiny_bert_artifact: Path, tmp_path: Path):
    art = _copy(tiny_bert_artifact, tmp_path)
    manifest = json.loads((art / MANIFEST_FILE).read_text())
    manifest.pop("cpu_model")  # a converter-1 artifact
    manifest["files"].pop(CPU_MODEL_FILE)
    (art / MANIFEST_FILE).write_text(json.dumps(manifest))
    (art / CPU_MODEL_FILE).unlink()
    engine = Engine(art, providers="CPU")
    assert engine.model_file == MODEL_FILE
    assert engine.embed(["hello"]).shape == (1, engine.dimension)


def test_warmup_runs_every_shape_corner(tiny_bert_artifact: Path):
    engine = Engine(tiny_bert_artifact, providers="CPU")
    engine.warmup(16)
    assert engine.warmed
    assert engine.warmed_shapes == engine.warmup_shapes(16)
    assert {(1, engine.max_length), (16, 8), (1, 8)} == set(engine.warmed_shapes)


def test_cpu_warmup_stops_at_a_bounded_length(tiny_bert_artifact: Path):
    engine = Engine(tiny_bert_artifact, providers="CPU")
    engine.max_length = 8192  # a Qwen3-sized limit: its full-length run takes minutes on a CPU
    assert (1, CPU_WARMUP_MAX_TOKENS) in engine.warmup_shapes(16)
    assert max(tokens for _, tokens in engine.warmup_shapes(16)) == CPU_WARMUP_MAX_TOKENS
    engine.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert (1, 8192) in engine.warmup_shapes(16)  # a GPU warms (and builds) the whole profile


def test_serve_imports_no_torch_conversion_or_operator(tiny_bert_artifact: Path):
    with ServerProcess(
        tiny_bert_artifact, ["--no-self-benchmark"], env={"PYTHONPROFILEIMPORTTIME": "1"}
    ) as srv:
        status, _ = http_get(srv.url + "/readyz")
        assert status == 200
        log = srv.stderr_text()
    # Self times can be negative: the engine's thread imports onnxruntime while the main
    # thread imports aiohttp, and -X importtime's bookkeeping is per interpreter.
    imported = set(re.findall(r"^import time:\s+-?\d+ \|\s+-?\d+ \|\s+(\S+)$", log, re.M))
    assert {"onnxruntime", "aiohttp", "akidb_embed.model_server.engine"} <= imported
    heavy = {m.split(".")[0] for m in imported} & {"torch", "transformers", "kopf", "onnx"}
    assert not heavy, heavy
    ours = {m for m in imported if m.startswith(("akidb_embed.conversion", "akidb_embed.operator"))}
    assert not ours, ours
