"""The converted-model artifact: its directory layout, manifest and storage key.

This is the contract between conversion (writes it), the model server (reads it)
and the operator (finds it by key in node-local storage).

Layout of an artifact directory::

    model.onnx            the ONNX graph (external data next to it for models > 2 GiB)
    model.ort-cpu.onnx    optional (manifest ``cpu_model``): the fastest graph for ONNX
                          Runtime on CPU, chosen at conversion and saved optimized
    tokenizer.json        fast tokenizer (plus whatever tokenizer files the source had)
    manifest.json         ArtifactManifest below
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
MANIFEST_SCHEMA = 1
# Bump when the conversion output changes shape, so old artifacts are not reused.
# 2: the CPU graph chosen by measurement (model.ort-cpu.onnx, manifest cpu_model).
CONVERTER_VERSION = "2"


class ArtifactError(Exception):
    """The artifact directory is missing, incomplete or corrupt."""


def artifact_key(source: str, revision: str, precision: str, opset: int | None = None) -> str:
    """Storage key of an artifact: a digest of what determines its content.

    `source` is a hub repo id or an absolute path on the node. The operator and the
    conversion job both call this, so they agree on where an artifact lives.
    """
    material = json.dumps(
        {
            "source": source,
            "revision": revision,
            "precision": precision,
            "opset": opset,
            "converter": CONVERTER_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass
class Parity:
    """How the ONNX model compares with the PyTorch reference on fixed texts.

    Embedding models: cosine of each text's embedding with the reference (threshold: the
    lowest allowed). Rerankers: `max_abs_error` of the relevance logits of fixed
    (query, document) pairs (threshold: the largest allowed); the cosines are None.
    """

    min_cosine: float | None
    mean_cosine: float | None
    texts: int
    threshold: float
    reference: str  # e.g. "transformers 5.23.0 / torch 2.15.0"
    max_abs_error: float | None = None


# Quantization ranges for the int8/uint8 output types, calibrated at conversion:
# {"normalized" | "raw": {"<dimension>": [[min per dimension], [max per dimension]]}},
# one entry per output dimension the model serves (matryoshka dimensions included).
Quantization = dict[str, dict[str, list[list[float]]]]


@dataclass
class ArtifactManifest:
    name: str
    family: str
    architecture: str
    pooling: str  # mean | cls | last-token
    padding_side: str  # right | left (left for last-token)
    normalize: bool
    dimension: int
    max_length: int
    precision: str  # fp32 | fp16 | int8
    opset: int
    source: str
    revision: str
    key: str
    inputs: list[str]  # ONNX input names, e.g. input_ids, attention_mask[, token_type_ids]
    output: str  # ONNX output holding token states, e.g. last_hidden_state
    matryoshka_dimensions: list[int] = field(default_factory=list)
    task: str = "embed"  # embed | rerank (a cross-encoder: output is relevance logits)
    catalog_id: str = ""  # the catalog entry the conversion recognised, if any
    quantization: Quantization = field(default_factory=dict)
    query_prefix: str = ""
    document_prefix: str = ""
    files: dict[str, str] = field(default_factory=dict)  # relative path -> "sha256:<hex>"
    # The saved CPU graph (relative path), "" when the artifact has none (converter 1).
    cpu_model: str = ""
    parity: Parity | None = None
    created: str = ""
    tool_versions: dict[str, str] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA

    def allowed_dimensions(self) -> list[int]:
        return sorted({self.dimension, *self.matryoshka_dimensions})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactManifest:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise ArtifactError(f"manifest is missing fields: {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        if values.get("schema", MANIFEST_SCHEMA) != MANIFEST_SCHEMA:
            raise ArtifactError(
                f"manifest schema {values.get('schema')} is not supported "
                f"(this build reads schema {MANIFEST_SCHEMA})"
            )
        if values.get("parity") is not None:
            values["parity"] = Parity(**values["parity"])
        return cls(**values)

    @classmethod
    def load(cls, directory: Path) -> ArtifactManifest:
        path = Path(directory) / MANIFEST_FILE
        if not Path(directory).is_dir():
            raise ArtifactError(f"artifact directory {directory} does not exist")
        if not path.is_file():
            raise ArtifactError(f"{path} not found: is {directory} a converted artifact?")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} must hold a JSON object")
        return cls.from_dict(data)


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return "sha256:" + h.hexdigest()


def verify_files(directory: Path, manifest: ArtifactManifest, only: set[str] | None = None) -> None:
    """Check every file the manifest lists (or those of them in ``only``: the files a
    reader actually opens) exists and has its recorded digest."""
    for rel, expected in manifest.files.items():
        if only is not None and rel not in only:
            continue
        path = Path(directory) / rel
        if not path.is_file():
            raise ArtifactError(f"artifact file {path} is missing")
        actual = file_digest(path)
        if actual != expected:
            raise ArtifactError(
                f"artifact file {path} is corrupt: digest {actual} != manifest {expected}"
            )
