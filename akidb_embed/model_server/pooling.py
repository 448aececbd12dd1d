"""Pooling of token states into sentence embeddings, in numpy.

Shared by the model server and the conversion parity check, so both pool the same
way. Every function takes ``hidden`` [batch, seq, hidden] (any float dtype; the result
is float32) and ``mask`` [batch, seq] (1 for real tokens, 0 for padding), and is
correct for both right and left padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

POOLING_MODES: tuple[str, ...] = ("mean", "cls", "last-token")

FloatArray = npt.NDArray[np.float32]


def _check(hidden: npt.ArrayLike, mask: npt.ArrayLike) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    h = np.asarray(hidden, dtype=np.float32)
    m = np.asarray(mask)
    if h.ndim != 3:
        raise ValueError(f"hidden must be [batch, seq, hidden], got shape {h.shape}")
    if m.shape != h.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match hidden {h.shape[:2]}")
    return h, m != 0


def mean_pool(hidden: npt.ArrayLike, mask: npt.ArrayLike) -> FloatArray:
    """Average of the token states where mask is 1 (sentence-transformers' mean)."""
    h, m = _check(hidden, mask)
    w = m.astype(np.float32)
    # [b, 1, seq] @ [b, seq, hidden]: one batched matmul, no [b, seq, hidden] temporary
    # (2x faster for one text, 4x for 32).
    summed = np.matmul(w[:, None, :], h)[:, 0, :]
    counts = np.maximum(w.sum(axis=1, keepdims=True), 1e-9)
    return (summed / counts).astype(np.float32, copy=False)


def cls_pool(hidden: npt.ArrayLike, mask: npt.ArrayLike) -> FloatArray:
    """State of the first real token (position 0 with right padding)."""
    h, m = _check(hidden, mask)
    first = np.argmax(m, axis=1)  # first True; 0 for an all-padding row
    return h[np.arange(h.shape[0]), first].astype(np.float32)


def last_token_pool(hidden: npt.ArrayLike, mask: npt.ArrayLike) -> FloatArray:
    """State of the last real token: the last position whose mask is 1.

    Works for left padding (always the final position) and right padding
    (position ``length - 1``), and for masks with holes.
    """
    h, m = _check(hidden, mask)
    seq = m.shape[1]
    last = seq - 1 - np.argmax(m[:, ::-1], axis=1)  # last True; seq-1 for all-padding
    return h[np.arange(h.shape[0]), last].astype(np.float32)


def pool(hidden: npt.ArrayLike, mask: npt.ArrayLike, mode: str) -> FloatArray:
    if mode == "mean":
        return mean_pool(hidden, mask)
    if mode == "cls":
        return cls_pool(hidden, mask)
    if mode in ("last-token", "last_token", "last"):
        return last_token_pool(hidden, mask)
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")


def l2_normalize(x: npt.ArrayLike, eps: float = 1e-12) -> FloatArray:
    """Rows scaled to unit L2 norm (a zero row stays zero)."""
    a = np.asarray(x, dtype=np.float32)
    # einsum row norms: same result as np.linalg.norm, without its per-call overhead.
    norms = np.sqrt(np.einsum("...i,...i->...", a, a))[..., None]
    return (a / np.maximum(norms, eps)).astype(np.float32, copy=False)


def truncate_dims(x: npt.ArrayLike, dimensions: int | None, normalize: bool) -> FloatArray:
    """Matryoshka truncation: keep the first ``dimensions`` values, renormalize if asked.

    ``dimensions`` None (or the full width) keeps every value; ``normalize`` then still
    applies, so callers can use this as the one post-processing step.
    """
    a = np.asarray(x, dtype=np.float32)
    width = a.shape[-1]
    if dimensions is not None:
        if dimensions < 1 or dimensions > width:
            raise ValueError(f"dimensions must be between 1 and {width}, got {dimensions}")
        a = a[..., :dimensions]
    return l2_normalize(a) if normalize else np.ascontiguousarray(a, dtype=np.float32)


def cosine(a: npt.ArrayLike, b: npt.ArrayLike) -> FloatArray:
    """Row-wise cosine similarity of two [n, d] arrays (a parity-check helper)."""
    return np.sum(l2_normalize(a) * l2_normalize(b), axis=-1).astype(np.float32)


def postprocess(
    hidden: npt.ArrayLike,
    mask: npt.ArrayLike,
    mode: str,
    normalize: bool,
    dimensions: int | None = None,
) -> FloatArray:
    """pool -> (truncate) -> (normalize): what the server returns for a batch."""
    return truncate_dims(pool(hidden, mask, mode), dimensions, normalize)


__all__: Sequence[str] = (
    "POOLING_MODES",
    "cls_pool",
    "cosine",
    "l2_normalize",
    "last_token_pool",
    "mean_pool",
    "pool",
    "postprocess",
    "truncate_dims",
)
