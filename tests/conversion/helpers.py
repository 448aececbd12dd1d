"""Small helpers for the conversion tests: embed through an artifact like the server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from akidb_embed.artifact import MODEL_FILE, TOKENIZER_FILE, ArtifactManifest
from akidb_embed.conversion.parity import load_tokenizer, onnx_embed, ort_session, tokenize


def artifact_embed(artifact: Path, texts: Sequence[str], graph: str = MODEL_FILE) -> np.ndarray:
    """Embeddings of ``texts`` (one padded batch) from the artifact's ``graph`` (a file
    name in it), via ORT + numpy."""
    manifest = ArtifactManifest.load(artifact)
    tok = load_tokenizer(artifact / TOKENIZER_FILE, manifest.max_length)
    feeds = tokenize(tok, texts, manifest.inputs)
    session = ort_session(artifact / graph)
    return onnx_embed(session, feeds, manifest.pooling, manifest.normalize)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.asarray((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))


TEXTS = [
    "hi",
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Ünïcödé, 日本語, and emoji 🚀 in one sentence.",
    "The operator evicts the least recently requested model when all slots are full, "
    "unless it is pinned or served traffic within the minimum residency window. " * 4,
    "x",
]
