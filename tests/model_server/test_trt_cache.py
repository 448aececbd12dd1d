"""The TensorRT engine cache works with a read-only artifact store (no TensorRT here:
the options the TensorRT provider would get, and the folder they name, are checked)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from akidb_embed.model_server import engine


def _fake_engine(artifact: Path) -> SimpleNamespace:
    manifest = SimpleNamespace(inputs=["input_ids", "attention_mask"], precision="fp16", key="k1")
    return SimpleNamespace(artifact_dir=artifact, manifest=manifest, max_length=256)


def test_cache_dir_from_the_operator_is_seeded_with_the_converters_engines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "store" / "k1"
    (artifact / "trt-cache").mkdir(parents=True)
    (artifact / "trt-cache" / "model.engine").write_bytes(b"warm")
    cache = tmp_path / "trt" / "k1"
    (cache.parent).mkdir()
    (cache.parent / "k1").mkdir()
    (cache / "timing.cache").write_bytes(b"newer")
    os.chmod(artifact, 0o555)  # the store as model pods see it: read-only
    monkeypatch.setenv(engine.TRT_CACHE_ENV, str(cache))
    try:
        opts = engine.Engine._trt_options(_fake_engine(artifact), 8)  # type: ignore[arg-type]
    finally:
        os.chmod(artifact, 0o755)
    assert opts["trt_engine_cache_path"] == str(cache)
    assert opts["trt_timing_cache_path"] == str(cache)
    assert (cache / "model.engine").read_bytes() == b"warm"  # copied from the artifact
    assert (cache / "timing.cache").read_bytes() == b"newer"  # kept, not overwritten


def test_without_the_operators_cache_dir_the_artifacts_own_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(engine.TRT_CACHE_ENV, raising=False)
    artifact = tmp_path / "k1"
    artifact.mkdir()
    opts = engine.Engine._trt_options(_fake_engine(artifact), 8)  # type: ignore[arg-type]
    assert opts["trt_engine_cache_path"] == str(artifact / "trt-cache")
    assert (artifact / "trt-cache").is_dir()
