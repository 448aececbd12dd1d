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
