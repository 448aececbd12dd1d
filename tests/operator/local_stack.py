"""The local overlay as the operator cluster tests deploy it: node folders of this test
session (model store, Hugging Face cache, TensorRT caches, source root) in place of the
node's /var/lib/akidb ones."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from akidb_embed.devcluster import images

ROOT = Path(__file__).resolve().parents[2]


def chown_tree(path: Path) -> None:
    """Hand a folder the pods read and lock files in to the images' user (UID 10001)."""
    subprocess.run(["chown", "-R", f"{images.APP_UID}:{images.APP_UID}", str(path)], check=True)


def copy_source(checkpoint: Path, dest: Path) -> Path:
    """A checkpoint into the source root as an admin prepares it: readable by the
    converter (UID 10001). save_pretrained may leave the weights 0600."""
    shutil.copytree(checkpoint, dest)
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return dest


def render_overlay(folders: dict[str, Path], kubectl: Any) -> str:
    rendered = kubectl("kustomize", str(ROOT / "manifests" / "overlays" / "local")).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    overrides = {
        "AKIDB_MODEL_STORE": str(folders["store"]),
        "AKIDB_HF_CACHE": str(folders["hf"]),
        "AKIDB_TRT_CACHE": str(folders["trt"]),
        "AKIDB_SOURCE_ROOT": str(folders["sources"]),
    }
    for doc in docs:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "akidb-operator":
            env = doc["spec"]["template"]["spec"]["containers"][0]["env"]
            env[:] = [e for e in env if e["name"] not in overrides]
            env += [{"name": k, "value": v} for k, v in overrides.items()]
    return "\n---\n".join(yaml.safe_dump(d) for d in docs)
