"""Masked top-k: every backend against a plain sort, NumPy's reference, torch.topk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nudgeserve.kernels import REGISTRY, topk
from nudgeserve.kernels._backend import BACKENDS
from nudgeserve.kernels._topk_ref import topk as topk_ref

backend_param = pytest.mark.parametrize("backend", BACKENDS)

# Few distinct values make ties, and every special value the contract names.
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45]


def _impl(backend: str):
    impl = REGISTRY.implementations("topk").get(backend)
    if impl is None:
        pytest.skip(f"{backend} backend of topk is not available (not built / not installed)")
    return impl


def _by_sorting(scores: np.ndarray, k: int, mask: np.ndarray | None):
    """The contract spelled out with Python's sort, independent of the reference."""
    n_rows, _ = scores.shape
    indices = np.full((n_rows, k), -1, dtype=np.int64)
    values = np.full((n_rows, k), np.nan, dtype=np.float32)
    for r in range(n_rows):
        valid = [
            (-float(v), j)
            for j, v in enumerate(scores[r])
            if not np.isnan(v) and (mask is None or not mask[r, j])
        ]
        for s, (neg, j) in enumerate(sorted(valid)[:k]):
            indices[r, s] = j
            values[r, s] = -neg
    return indices, values


def _assert_same(got, want):
    gi, gv = got
    wi, wv = want
    assert gi.dtype == np.int64 and gv.dtype == np.float32
    assert gi.shape == wi.shape and gv.shape == wv.shape
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_array_equal(gv, wv)  # NaN == NaN here; -0.0 vs 0.0 by index


@st.composite
def topk_inputs(draw, max_rows=5, max_cols=80):
    n_rows = draw(st.integers(0, max_rows))
    n_cols = draw(st.integers(0, max_cols))
    shape = (n_rows, n_cols)
    kind = draw(st.sampled_from(["special", "normal", "ascending", "descending", "equal"]))
    if kind == "special":
        scores = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(SPECIAL)))
    elif kind == "equal":
        scores = np.full(shape, draw(st.sampled_from(SPECIAL)), dtype=np.float32)
    else:
        seed = draw(st.integers(0, 2**32 - 1))
        scores = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        if kind != "normal":
            scores = np.sort(scores, axis=1)
            if kind == "descending":
                scores = np.ascontiguousarray(scores[:, ::-1])
    mask = draw(st.one_of(st.none(), hnp.arrays(np.bool_, shape)))
    # k spans the sorted-buffer and heap paths (48) and the primed range (64).
    k = draw(st.one_of(st.integers(0, 12), st.integers(0, n_cols + 5), st.integers(40, 120)))
    return scores, k, mask


# -- every backend against the contract ------------------------------------------------


@backend_param
@settings(max_examples=150, deadline=None)
@given(data=topk_inputs())
def test_backend_matches_sorting_and_reference(backend, data):
    scores, k, mask = data
    impl = _impl(backend)
    want = _by_sorting(scores, k, mask)
    _assert_same(topk_ref(scores, k, mask), want)
    _assert_same(impl(scores, k, mask, 1), want)


@backend_param
@pytest.mark.parametrize("n_cols", [4095, 4096, 4097, 10_000])
@pytest.mark.parametrize("k", [1, 10, 64, 65, 300])
def test_long_rows_cross_the_primed_prefix(backend, n_cols, k):
    # The compiled kernels prime a threshold from the first 4096 elements; rows longer
    # than that, with a mask and NaN, must still give the exact answer.
    rng = np.random.default_rng(n_cols + k)
    scores = rng.standard_normal((3, n_cols)).astype(np.float32)
    scores[:, rng.integers(0, n_cols, 50)] = np.nan
    scores[1] = np.sort(scores[1])  # ascending: every element beats the threshold
    mask = rng.random((3, n_cols)) < 0.3
    impl = _impl(backend)
    for m in (None, mask):
        _assert_same(impl(scores, k, m, 1), topk_ref(scores, k, m))


@backend_param
def test_parallel_rows_equal_serial(backend):
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((600, 200)).astype(np.float32)  # above the parallel floor
    mask = rng.random(scores.shape) < 0.2
    impl = _impl(backend)
    for m in (None, mask):
        _assert_same(impl(scores, 9, m, 2), impl(scores, 9, m, 1))


@backend_param
def test_backend_runs_its_registered_examples(backend):
    impl = _impl(backend)
    for size in ("small", "batch", "typical", "large"):
        args, kwargs = REGISTRY.example("topk", size)
        scores, k, mask = args[:3]
        _assert_same(impl(*args, **kwargs), topk_ref(scores, k, mask))


# -- against torch.topk and numpy ---------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_rows=st.integers(1, 6),
    n_cols=st.integers(1, 300),
    k=st.integers(1, 300),
)
def test_matches_torch_topk_on_distinct_scores(seed, n_rows, n_cols, k):
    k = min(k, n_cols)
    rng = np.random.default_rng(seed)
    # A permutation of distinct values, so torch's unspecified tie order does not matter.
    scores = rng.permuted(np.tile(np.arange(n_cols, dtype=np.float32), (n_rows, 1)), axis=1)
    want_values, want_indices = torch.topk(torch.from_numpy(scores), k, dim=1)
    indices, values = topk(scores, k)
    np.testing.assert_array_equal(indices, want_indices.numpy())
    np.testing.assert_array_equal(values, want_values.numpy())


def test_ties_keep_index_order_like_a_stable_sort():
    scores = np.array([[1, 3, 3, 0, 3, 1, -0.0, 0.0]], dtype=np.float32)
    indices, values = topk(scores, 8)
    np.testing.assert_array_equal(indices[0], np.argsort(-scores[0], kind="stable"))
    np.testing.assert_array_equal(indices[0], [1, 2, 4, 0, 5, 3, 6, 7])


# -- edge cases through the public function --------------------------------------------


def test_padding_nan_and_masked_rows():
    scores = np.array(
        [[np.nan, 2.0, -np.inf, 1.0], [np.nan, np.nan, np.nan, np.nan], [5.0, 6.0, 7.0, 8.0]],
        dtype=np.float32,
    )
    mask = np.array([[False, False, False, True], [False] * 4, [True] * 4])
    indices, values = topk(scores, 3, mask)
    np.testing.assert_array_equal(indices, [[1, 2, -1], [-1, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(values, [[2.0, -np.inf, np.nan], [np.nan] * 3, [np.nan] * 3])


@pytest.mark.parametrize("shape,k", [((0, 5), 3), ((3, 0), 2), ((3, 5), 0), ((0, 0), 0)])
def test_empty_shapes(shape, k):
    indices, values = topk(np.zeros(shape, dtype=np.float32), k)
    assert indices.shape == values.shape == (shape[0], k)
    assert (indices == -1).all() and np.isnan(values).all()


def test_k_larger_than_n_pads():
    indices, values = topk(np.array([[0.5, 2.0]], dtype=np.float32), 4)
    np.testing.assert_array_equal(indices, [[1, 0, -1, -1]])
    np.testing.assert_array_equal(values, [[2.0, 0.5, np.nan, np.nan]])


def test_non_contiguous_inputs_are_handled():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 90)).astype(np.float32)
    mask = rng.random((6, 90)) < 0.3
    strided, strided_mask = base[::2, ::3], mask[::2, ::3]
    fortran = np.asfortranarray(base)
    _assert_same(topk(strided, 5, strided_mask), topk_ref(strided.copy(), 5, strided_mask.copy()))
    _assert_same(topk(fortran, 5, np.asfortranarray(mask)), topk_ref(base, 5, mask))


def test_numpy_integer_k_is_accepted():
    scores = np.array([[1.0, 3.0, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(topk(scores, np.int64(2))[0], [[1, 2]])


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores,k,mask,error,match",
    [
        (np.zeros((2, 3)), 1, None, TypeError, "scores must have dtype float32"),
        (np.zeros((2, 3), dtype=np.int32), 1, None, TypeError, "float32"),
        ([[1.0, 2.0]], 1, None, TypeError, "scores must be a numpy.ndarray"),
        (np.zeros(3, dtype=np.float32), 1, None, ValueError, r"scores must be 2-D"),
        (np.zeros((1, 2, 3), dtype=np.float32), 1, None, ValueError, "scores must be 2-D"),
        (np.zeros((2, 3), dtype=np.float32), -1, None, ValueError, "k must be >= 0"),
        (np.zeros((2, 3), dtype=np.float32), 1.5, None, TypeError, "k must be an int"),
        (np.zeros((2, 3), dtype=np.float32), True, None, TypeError, "k must be an int"),
        (
            np.zeros((2, 3), dtype=np.float32),
            1,
            np.zeros((2, 4), bool),
            ValueError,
            "mask must have the shape",
        ),
        (
            np.zeros((2, 3), dtype=np.float32),
            1,
            np.zeros((2, 3), int),
            TypeError,
            "mask must have dtype bool",
        ),
        (
            np.zeros((2, 3), dtype=np.float32),
            1,
            [[True] * 3] * 2,
            TypeError,
            "mask must be None or",
        ),
    ],
)
def test_bad_input_raises_clear_errors(scores, k, mask, error, match):
    with pytest.raises(error, match=match):
        topk(scores, k, mask)
