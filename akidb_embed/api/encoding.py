"""Output types of embeddings on the wire: float, base64, int8, uint8, binary, ubinary.

The same definitions as sentence-transformers' `quantize_embeddings` and Cohere's
`embedding_types`, so vectors can go into a vector database of that type as they are:

- float: float32 values; base64: their little-endian bytes (OpenAI's format).
- int8 / uint8: each value mapped linearly from its dimension's calibrated range
  [min, max] onto 256 steps (-128..127 / 0..255), clipped. The ranges come from the
  conversion (`calibrate` over fixed texts), stored in the manifest per dimension.
- binary / ubinary: one bit per dimension (value > 0), packed 8 per byte, big-endian
  bit order; binary is the packed byte minus 128 as int8, ubinary the byte as uint8.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Ranges = npt.NDArray[np.float32]  # [2, dimension]: per-dimension min and max


def calibrate(embeddings: npt.ArrayLike) -> Ranges:
    """Per-dimension [min, max] of calibration embeddings [n, dimension]."""
    a = np.asarray(embeddings, dtype=np.float32)
    return np.stack([a.min(axis=0), a.max(axis=0)]).astype(np.float32)


def _steps(vectors: FloatArray, ranges: Ranges) -> FloatArray:
    starts = ranges[0]
    width = np.maximum(ranges[1] - ranges[0], 1e-12)
    return np.asarray((vectors - starts) / width * 255.0, dtype=np.float32)


def to_int8(vectors: FloatArray, ranges: Ranges) -> npt.NDArray[np.int8]:
    return (np.clip(np.rint(_steps(vectors, ranges)), 0, 255) - 128).astype(np.int8)


def to_uint8(vectors: FloatArray, ranges: Ranges) -> npt.NDArray[np.uint8]:
    return np.clip(np.rint(_steps(vectors, ranges)), 0, 255).astype(np.uint8)


def to_ubinary(vectors: FloatArray) -> npt.NDArray[np.uint8]:
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def to_binary(vectors: FloatArray) -> npt.NDArray[np.int8]:
    return (to_ubinary(vectors).astype(np.int16) - 128).astype(np.int8)


def to_base64(vectors: FloatArray) -> list[str]:
    little = np.ascontiguousarray(vectors, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]


def from_base64(data: str) -> FloatArray:
    return np.frombuffer(base64.b64decode(data), dtype="<f4").astype(np.float32)


def encode(vectors: FloatArray, encoding: str, ranges: Ranges | None = None) -> Any:
    """`vectors` [n, d] in the wire type `encoding` (numpy arrays or base64 strings)."""
    if encoding == "float":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    if encoding == "base64":
        return to_base64(vectors)
    if encoding in ("binary", "ubinary"):
        return to_binary(vectors) if encoding == "binary" else to_ubinary(vectors)
    if ranges is None:
        raise ValueError(f"{encoding} needs calibrated ranges")
    return to_int8(vectors, ranges) if encoding == "int8" else to_uint8(vectors, ranges)


def bytes_per_embedding(encoding: str, dimension: int) -> int:
    """Size of one vector in its binary form (base64: the ASCII characters on the wire)."""
    if encoding == "float":
        return 4 * dimension
    if encoding == "base64":
        return 4 * ((4 * dimension + 2) // 3)
    if encoding in ("int8", "uint8"):
        return dimension
    return (dimension + 7) // 8
