"""manifests/models/*.yaml: one EmbeddingModel per catalog entry, generated from catalog.py.

Regenerate after changing the catalog:

    python -m akidb_embed.operator.model_manifests manifests/models

tests/operator/test_manifests.py fails when the files and the catalog disagree.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from akidb_embed import k8s
from akidb_embed.catalog import CATALOG, CatalogEntry

HEADER = "# Generated from akidb_embed/catalog.py by akidb_embed.operator.model_manifests.\n"
DEFAULT_IDLE_TIMEOUT = "30m"


def embedding_model(entry: CatalogEntry) -> dict[str, Any]:
    """The EmbeddingModel resource for a catalog entry."""
    spec: dict[str, Any] = {
        "source": {"repo": entry.repo_id, "revision": entry.revision},
        "family": entry.family.name,
        "architecture": entry.family.architecture,
        "task": entry.family.task,
        "dimension": entry.dimension,
        "maxLength": entry.max_length,
        "pooling": entry.pooling,
        "normalize": entry.family.normalize,
    }
    if entry.family.query_prefix:
        spec["queryPrefix"] = entry.family.query_prefix
    if entry.family.document_prefix:
        spec["documentPrefix"] = entry.family.document_prefix
    if entry.matryoshka_dimensions:
        spec["matryoshkaDimensions"] = list(entry.matryoshka_dimensions)
    spec.update(
        {
            "precision": entry.default_precision,
            "executionProviders": ["TensorRT", "CUDA", "CPU"],
            "resources": {"memory": entry.memory},
            "pinned": False,
            "idleTimeout": DEFAULT_IDLE_TIMEOUT,
            "maxBatchSize": 32,
            "maxBatchTokens": 16384,
            "catalog": {
                "params": entry.params,
                "languages": list(entry.languages),
                "license": entry.license,
            },
        }
    )
    return {
        "apiVersion": k8s.API_VERSION,
        "kind": k8s.KIND,
        "metadata": {
            "name": entry.name,
            "labels": {k8s.LABEL_PART_OF: k8s.PART_OF},
        },
        "spec": spec,
    }


def render(entry: CatalogEntry) -> str:
    return HEADER + yaml.safe_dump(embedding_model(entry), sort_keys=False, width=100)


def kustomization() -> str:
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{e.name}.yaml" for e in CATALOG],
    }
    return HEADER + yaml.safe_dump(body, sort_keys=False)


def expected_files() -> dict[str, str]:
    files = {f"{e.name}.yaml": render(e) for e in CATALOG}
    files["kustomization.yaml"] = kustomization()
    return files


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in expected_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "manifests/models")):
        print(path)
