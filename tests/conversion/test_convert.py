"""convert(): precisions, failure handling, idempotence, hub cache, CLI, TensorRT skip."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from akidb_embed.artifact import (
    MODEL_FILE,
    TOKENIZER_FILE,
    ArtifactManifest,
    artifact_key,
    verify_files,
)
from akidb_embed.cli import main as cli_main
from akidb_embed.conversion import ConversionError, ParityError, convert, seed_hf_cache
from akidb_embed.conversion.parity import ParityReference
from akidb_embed.conversion.tensorrt import warm_tensorrt_engine

from .helpers import TEXTS, artifact_embed, row_cosines

pytestmark = pytest.mark.slow

BERT_OPTS = {"family": "bge", "max_length": 64}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def test_fp16_produces_valid_fp16_graph(
    tiny_bert_checkpoint: Path, tiny_bert_artifact: Path, tmp_path
):
    out = tmp_path / "fp16"
    m = convert(tiny_bert_checkpoint, out, name="tiny-bert", precision="fp16", **BERT_OPTS)
    assert m.precision == "fp16"
    graph = onnx.load(str(out / MODEL_FILE))
    onnx.checker.check_model(graph)
    weights = [i for i in graph.graph.initializer if len(i.dims) == 2 and min(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    # keep_io_types: int64 ids in, float32 states out, for the server's numpy code.
    assert {i.type.tensor_type.elem_type for i in graph.graph.input} == {onnx.TensorProto.INT64}
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # ORT on CPU runs it: the parity against PyTorch was measured and recorded.
    assert m.parity is not None and m.parity.min_cosine >= 0.999
    fp32 = artifact_embed(tiny_bert_artifact, TEXTS)
    assert row_cosines(fp32, artifact_embed(out, TEXTS)).min() >= 0.999
    assert (out / MODEL_FILE).stat().st_size < 0.6 * (
        tiny_bert_artifact / MODEL_FILE
    ).stat().st_size


def test_parity_failure_fails_loudly_and_leaves_nothing(tiny_bert_checkpoint: Path, tmp_path):
    out = tmp_path / "art"
    with pytest.raises(
        ConversionError, match=r"parity check failed: min cosine (0\.99|1\.0)\d+ < threshold 1\.01"
    ):
        convert(tiny_bert_checkpoint, out, parity_threshold=1.01, **BERT_OPTS)
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_corrupted_graph_is_caught_by_parity(
    tiny_bert_artifact: Path, tiny_bert_checkpoint: Path, tmp_path
):
    from transformers import AutoModel

    m = ArtifactManifest.load(tiny_bert_artifact)
    graph = onnx.load(str(tiny_bert_artifact / MODEL_FILE))
    rng = np.random.default_rng(0)
    from onnx import numpy_helper

    corrupted = 0
    for init in graph.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.ndim == 2 and arr.shape == (32, 32):  # attention projections
            init.CopyFrom(
                numpy_helper.from_array(rng.normal(size=arr.shape).astype(np.float32), init.name)
            )
            corrupted += 1
    assert corrupted
    bad = tmp_path / "bad.onnx"
    onnx.save(graph, str(bad))
    reference = ParityReference(
        tiny_bert_artifact / TOKENIZER_FILE,
        AutoModel.from_pretrained(str(tiny_bert_checkpoint), attn_implementation="eager").eval(),
        input_names=m.inputs,
        pooling=m.pooling,
        normalize=m.normalize,
        max_length=m.max_length,
    )
    assert reference.check(tiny_bert_artifact / MODEL_FILE, 0.999).min_cosine >= 0.999
    with pytest.raises(ParityError, match="parity check failed: min cosine"):
        reference.check(bad, 0.999)


def test_cli_parity_failure_exit_code(tiny_bert_checkpoint: Path, tmp_path):
    out = tmp_path / "art"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "akidb_embed",
            "convert",
            str(tiny_bert_checkpoint),
            str(out),
            "--family",
            "bge",
            "--max-length",
            "64",
            "--parity-threshold",
            "1.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "akidb-embed convert: error: parity check failed" in proc.stderr
    assert "exporting the ONNX graph" in proc.stderr  # progress is visible
    assert not out.exists() and _leftovers(tmp_path) == []


def test_cli_missing_source(tmp_path, capsys):
    rc = cli_main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert rc == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_source_without_config(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"x")
    rc = cli_main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "out")])
    assert rc == 1
    assert "has no config.json" in capsys.readouterr().err


def test_cli_corrupt_weights(tiny_bert_checkpoint: Path, tmp_path, capsys):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_bert_checkpoint, src)
    (src / "model.safetensors").write_bytes(b"\x00garbage, not safetensors" * 10)
    rc = cli_main(["convert", str(src), str(tmp_path / "out"), "--family", "bge"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot load the model from" in err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_cli_unknown_pooling_for_unknown_model(tiny_bert_checkpoint: Path, tmp_path, capsys):
    rc = cli_main(["convert", str(tiny_bert_checkpoint), str(tmp_path / "out")])
    assert rc == 1
    assert "pass --family or --pooling" in capsys.readouterr().err


def test_hub_repo_offline_unknown(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    rc = cli_main(["convert", "no-such-org/no-such-model", str(tmp_path / "out")])
    assert rc == 1
    assert "cannot resolve no-such-org/no-such-model@main" in capsys.readouterr().err


def test_seeded_cache_resolved_by_snapshot_download(tiny_bert_checkpoint: Path, tmp_path):
    from huggingface_hub import snapshot_download

    cache = tmp_path / "hub"
    snapshot = seed_hf_cache("test-org/tiny-bert", tiny_bert_checkpoint, cache)
    repo = cache / "models--test-org--tiny-bert"
    assert (repo / "refs" / "main").read_text() == snapshot.name and len(snapshot.name) == 40
    found = snapshot_download("test-org/tiny-bert", cache_dir=str(cache), local_files_only=True)
    assert Path(found) == snapshot
    for f in tiny_bert_checkpoint.iterdir():
        assert (Path(found) / f.name).read_bytes() == f.read_bytes()
        assert (Path(found) / f.name).is_symlink()
    # Seeding again is idempotent (same commit).
    assert seed_hf_cache("test-org/tiny-bert", tiny_bert_checkpoint, cache) == snapshot


def test_cli_converts_from_seeded_hub_cache_offline(tiny_bert_checkpoint: Path, tmp_path):
    cache = tmp_path / "hub"
    seed_hf_cache("test-org/tiny-bert", tiny_bert_checkpoint, cache)
    out = tmp_path / "art"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "akidb_embed",
            "convert",
            "test-org/tiny-bert",
            str(out),
            "--family",
            "bge",
            "--max-length",
            "64",
            "--warm-tensorrt",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = ArtifactManifest.load(out)
    assert m.source == "test-org/tiny-bert" and m.revision == "main"
    assert m.key == artifact_key("test-org/tiny-bert", "main", "fp32")
    assert m.name == "tiny-bert"
    verify_files(out, m)
    assert "TensorRT warm-up skipped" in proc.stderr
    assert not (out / "trt-cache").exists()


def test_warm_tensorrt_skip_path(tiny_bert_artifact: Path, caplog):
    caplog.set_level(logging.INFO, logger="akidb_embed.conversion")
    result = warm_tensorrt_engine(tiny_bert_artifact, ArtifactManifest.load(tiny_bert_artifact))
    assert result.warmed is False
    assert "TensorrtExecutionProvider" in result.reason
    assert "TensorRT warm-up skipped" in caplog.text


def test_reconvert_is_idempotent_and_force(tiny_bert_checkpoint: Path, tmp_path, caplog):
    out = tmp_path / "art"
    first = convert(tiny_bert_checkpoint, out, **BERT_OPTS)
    stamp = (out / MODEL_FILE).stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="akidb_embed.conversion")
    again = convert(tiny_bert_checkpoint, out, **BERT_OPTS)
    assert "already converted" in caplog.text
    assert again.key == first.key and again.created == first.created
    assert (out / MODEL_FILE).stat().st_mtime_ns == stamp
    # CLI: the same conversion exits 0 at once.
    assert (
        cli_main(
            [
                "convert",
                str(tiny_bert_checkpoint),
                str(out),
                "--family",
                "bge",
                "--max-length",
                "64",
            ]
        )
        == 0
    )
    # Another conversion into the same directory is refused without --force...
    with pytest.raises(ConversionError, match="already holds a different artifact"):
        convert(tiny_bert_checkpoint, out, precision="int8", **BERT_OPTS)
    assert ArtifactManifest.load(out).key == first.key
    # ...and replaces it with --force.
    replaced = convert(tiny_bert_checkpoint, out, precision="int8", force=True, **BERT_OPTS)
    assert ArtifactManifest.load(out).key == replaced.key != first.key
    verify_files(out, replaced)
    assert _leftovers(tmp_path) == []


def test_refuses_non_artifact_directory(tiny_bert_checkpoint: Path, tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "precious.txt").write_text("do not delete")
    with pytest.raises(ConversionError, match="not an artifact; pass --force"):
        convert(tiny_bert_checkpoint, out, **BERT_OPTS)
    assert (out / "precious.txt").read_text() == "do not delete"


def test_slow_tokenizer_only_source(tiny_bert_checkpoint: Path, tmp_path):
    """A source with vocab.txt but no tokenizer.json gets one converted by transformers."""
    src = tmp_path / "slow"
    shutil.copytree(tiny_bert_checkpoint, src)
    (src / "tokenizer.json").unlink()
    out = tmp_path / "art"
    convert(src, out, **BERT_OPTS)
    from tokenizers import Tokenizer

    made = Tokenizer.from_file(str(out / TOKENIZER_FILE))
    original = Tokenizer.from_file(str(tiny_bert_checkpoint / TOKENIZER_FILE))
    assert made.padding is not None and made.padding["direction"] == "right"
    assert made.padding["pad_token"] == "[PAD]" and made.truncation is None
    made.no_padding()
    original.no_padding()
    original.no_truncation()
    for text in TEXTS:
        assert made.encode(text).ids == original.encode(text).ids


def test_minilm_hf_cache_fixture(minilm_hf_cache: Path, minilm_checkpoint: Path):
    from huggingface_hub import snapshot_download

    from tests.fixtures.models import MINILM_REPO_ID

    found = Path(
        snapshot_download(MINILM_REPO_ID, cache_dir=str(minilm_hf_cache), local_files_only=True)
    )
    assert (found / "model.safetensors").read_bytes() == (
        minilm_checkpoint / "model.safetensors"
    ).read_bytes()
    assert (found / "1_Pooling" / "config.json").is_file()


def test_opset_17_request_is_converted(tiny_bert_checkpoint: Path, tmp_path):
    m = convert(tiny_bert_checkpoint, tmp_path / "o17", opset=17, **BERT_OPTS)
    assert m.opset == 17
    assert m.key == artifact_key(str(tiny_bert_checkpoint), "main", "fp32", 17)
    assert m.key != artifact_key(str(tiny_bert_checkpoint), "main", "fp32")
    graph = onnx.load(str(tmp_path / "o17" / MODEL_FILE))
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert m.parity is not None and m.parity.min_cosine >= 0.999
