"""Dockerfile.server lints clean (it cannot be built here: no Docker engine, x86)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.server"


def test_hadolint_is_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    res = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == ""


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    assert "HEALTHCHECK" not in text.replace("No HEALTHCHECK", "")
    assert 'ENTRYPOINT ["akidb-embed", "serve"]' in text
    assert "USER 10001" in text
    assert '".[server]"' in text and "onnxruntime-gpu" in text
    assert "ARG ORT_GPU_INDEX" in text and "ARG BASE_IMAGE" in text
    # every file the build copies exists in the repository
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src


ALL_DOCKERFILES = ("Dockerfile.operator", "Dockerfile.server", "Dockerfile.converter")


def test_every_dockerfile_lints_clean_and_builds_offline_on_any_base() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    for name in ALL_DOCKERFILES:
        res = subprocess.run(
            [str(hadolint), "--no-color", str(ROOT / name)], capture_output=True, text=True
        )
        assert res.returncode == 0, (name, res.stdout + res.stderr)
        text = (ROOT / name).read_text()
        # The local build passes a debootstrap base and an offline wheelhouse.
        assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text, name
        assert "${PIP_INSTALL_ARGS}" in text, name
        assert "USER 10001:10001" in text and "HOME=/tmp" in text, name


def test_the_converter_image_has_what_akidb_embed_convert_imports() -> None:
    text = (ROOT / "Dockerfile.converter").read_text()
    assert '".[convert]"' in text
    assert "import torch, transformers, onnx, onnxscript, onnxruntime" in text
    assert 'ENTRYPOINT ["akidb-embed"]' in text
