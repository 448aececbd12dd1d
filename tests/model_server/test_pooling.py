"""Pooling, normalization and matryoshka truncation (numpy, no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from akidb_embed.model_server.pooling import (
    cls_pool,
    l2_normalize,
    last_token_pool,
    mean_pool,
    pool,
    postprocess,
    truncate_dims,
)


def test_mean_pool_ignores_padding() -> None:
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask), [[2.0, 3.0]])


def test_cls_pool_right_and_left_padding() -> None:
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    right = np.array([[1, 1, 0], [1, 1, 1]])
    left = np.array([[0, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(cls_pool(hidden, right), hidden[:, 0])
    np.testing.assert_allclose(cls_pool(hidden, left), [hidden[0, 1], hidden[1, 0]])


def test_last_token_pool_right_and_left_padding() -> None:
    hidden = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2)
    right = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])
    np.testing.assert_allclose(
        last_token_pool(hidden, right), [hidden[0, 1], hidden[1, 3], hidden[2, 0]]
    )
    np.testing.assert_allclose(last_token_pool(hidden, left), hidden[:, 3])


def test_pool_dispatch_and_unknown_mode() -> None:
    hidden = np.ones((1, 2, 3), dtype=np.float16)
    mask = np.ones((1, 2), dtype=np.int64)
    for mode in ("mean", "cls", "last-token"):
        out = pool(hidden, mask, mode)
        assert out.dtype == np.float32 and out.shape == (1, 3)
    with pytest.raises(ValueError, match="unknown pooling mode 'max'"):
        pool(hidden, mask, "max")


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match=r"hidden must be \[batch, seq, hidden\]"):
        mean_pool(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="mask shape"):
        mean_pool(np.ones((2, 3, 4)), np.ones((2, 4)))


def test_l2_normalize_unit_rows_and_zero_row() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_truncate_dims_renormalizes_only_when_asked() -> None:
    x = np.array([[3.0, 4.0, 12.0]], dtype=np.float32)
    np.testing.assert_allclose(truncate_dims(x, 2, normalize=True), [[0.6, 0.8]], rtol=1e-6)
    np.testing.assert_allclose(truncate_dims(x, 2, normalize=False), [[3.0, 4.0]])
    np.testing.assert_allclose(truncate_dims(x, None, normalize=False), x)
    np.testing.assert_allclose(np.linalg.norm(truncate_dims(x, None, normalize=True)), 1.0)
    with pytest.raises(ValueError, match="between 1 and 3"):
        truncate_dims(x, 4, normalize=True)
    with pytest.raises(ValueError, match="between 1 and 3"):
        truncate_dims(x, 0, normalize=True)


_floats = st.floats(-10, 10, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    states=hnp.arrays(
        np.float32, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=_floats
    ),
    pad=st.integers(0, 5),
    mode=st.sampled_from(["mean", "cls", "last-token"]),
    left=st.booleans(),
)
def test_padding_invariance(states: np.ndarray, pad: int, mode: str, left: bool) -> None:
    """Adding padding (on either side, with any garbage states) never changes the result."""
    seq, width = states.shape
    unpadded = pool(states[None], np.ones((1, seq)), mode)
    garbage = np.full((pad, width), 1e4, dtype=np.float32)
    if left:
        padded = np.concatenate([garbage, states])[None]
        mask = np.array([[0] * pad + [1] * seq])
    else:
        padded = np.concatenate([states, garbage])[None]
        mask = np.array([[1] * seq + [0] * pad])
    np.testing.assert_allclose(pool(padded, mask, mode), unpadded, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(2, 16)), elements=_floats),
    data=st.data(),
)
def test_truncate_matches_prefix_and_is_unit(x: np.ndarray, data: st.DataObject) -> None:
    dims = data.draw(st.integers(1, x.shape[1]))
    out = truncate_dims(x, dims, normalize=True)
    assert out.shape == (x.shape[0], dims)
    norms = np.linalg.norm(x[:, :dims], axis=1)
    nonzero = norms > 1e-3
    np.testing.assert_allclose(np.linalg.norm(out[nonzero], axis=1), 1.0, rtol=1e-5)
    # Same direction as the raw prefix.
    np.testing.assert_allclose(
        out[nonzero] * norms[nonzero, None], x[nonzero, :dims], rtol=1e-4, atol=1e-4
    )


def test_postprocess_chains_pool_truncate_normalize() -> None:
    hidden = np.array([[[3.0, 4.0, 1.0], [3.0, 4.0, 1.0], [9.0, 9.0, 9.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(postprocess(hidden, mask, "mean", True, 2), [[0.6, 0.8]], rtol=1e-6)
