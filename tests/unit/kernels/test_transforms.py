"""Numeric transforms: every backend bit-identical to the reference, the NaN/inf rules, the API."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nudgeserve.kernels import REGISTRY, bucketize, clip, log1p, standardize
from nudgeserve.kernels._backend import BACKENDS
from nudgeserve.kernels._transforms_ref import LOG1P_CEIL, LOG1P_FLOOR

F32_MAX = float(np.finfo(np.float32).max)
ANY_F32 = st.floats(width=32)  # NaN, ±inf, subnormals, ±0.0 included
FINITE_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
MATRIX = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=7), elements=ANY_F32
)
SPECIALS = np.array(
    [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -1.5, 1e-45, 3e38, -3e38], np.float32
)

backend_param = pytest.mark.parametrize("backend", BACKENDS)


def _f32(v: float) -> float:
    """Nearest float32, as a bound hypothesis accepts for width=32."""
    return float(np.float32(v))


def _impl(op: str, backend: str):
    impl = REGISTRY.implementations(op).get(backend)
    if impl is None:
        pytest.skip(f"{backend} backend of {op} is not available (not built / not installed)")
    return impl


def _ref(op: str):
    return REGISTRY.implementations(op)["numpy"]


def _bits(a: np.ndarray) -> np.ndarray:
    """Compare floats bit for bit (NaN payloads, the sign of zero)."""
    return a.view(np.uint32) if a.dtype == np.float32 else a


def _assert_same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(_bits(got), _bits(want))


def _columns(n_cols: int, elements) -> st.SearchStrategy:
    return hnp.arrays(np.float32, (n_cols,), elements=elements)


# -- every backend, bit for bit, against the reference ----------------------------------


@backend_param
@settings(max_examples=50, deadline=None)
@given(data=st.data(), x=MATRIX)
def test_standardize_backend_matches_reference(backend, data, x):
    n_cols = x.shape[1]
    mean = data.draw(_columns(n_cols, FINITE_F32), label="mean")
    std = data.draw(_columns(n_cols, st.floats(_f32(1e-30), _f32(1e30), width=32)), label="std")
    max_z = np.float32(data.draw(st.floats(_f32(1e-3), 1e6, width=32), label="max_z"))
    want = _ref("standardize")(x, mean, std, max_z, np.empty_like(x), 1)
    got = np.empty_like(x)
    _impl("standardize", backend)(x, mean, std, max_z, got, 1)
    _assert_same_bits(got, want)
    assert np.isfinite(got).all() and (np.abs(got) <= max_z).all()


@backend_param
@settings(max_examples=50, deadline=None)
@given(data=st.data(), x=MATRIX)
def test_clip_backend_matches_reference(backend, data, x):
    n_cols = x.shape[1]
    a = data.draw(_columns(n_cols, st.floats(width=32, allow_nan=False)), label="a")
    b = data.draw(_columns(n_cols, st.floats(width=32, allow_nan=False)), label="b")
    low, high = np.minimum(a, b), np.maximum(a, b)
    fill = data.draw(_columns(n_cols, FINITE_F32), label="nan_fill")
    want = _ref("clip")(x, low, high, fill, np.empty_like(x), 1)
    got = np.empty_like(x)
    _impl("clip", backend)(x, low, high, fill, got, 1)
    _assert_same_bits(got, want)


@backend_param
@settings(max_examples=50, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(0, 40), elements=ANY_F32))
def test_log1p_backend_matches_reference(backend, x):
    x = np.concatenate([x, SPECIALS])
    want = _ref("log1p")(x, np.empty_like(x), 1)
    got = np.empty_like(x)
    _impl("log1p", backend)(x, got, 1)
    _assert_same_bits(got, want)


@backend_param
@settings(max_examples=50, deadline=None)
@given(
    x=hnp.arrays(np.float32, st.integers(0, 40), elements=ANY_F32),
    bounds=hnp.arrays(
        np.float32, st.integers(0, 40), elements=st.floats(width=32, allow_nan=False)
    ),
    int64=st.booleans(),
)
def test_bucketize_backend_matches_reference(backend, x, bounds, int64):
    x = np.concatenate([x, SPECIALS, np.sort(bounds)])  # values equal to a boundary too
    bounds = np.sort(bounds)
    dtype = np.int64 if int64 else np.int32
    want = _ref("bucketize")(x, bounds, np.empty(x.shape, dtype), 1)
    got = np.empty(x.shape, dtype)
    _impl("bucketize", backend)(x, bounds, got, 1)
    _assert_same_bits(got, want)


@backend_param
@pytest.mark.parametrize("n_bounds", [0, 1, 7, 24, 25, 100, 1025, 5000])
def test_bucketize_backend_every_search_strategy(backend, n_bounds):
    """Counting (few bounds) and binary search (many) agree with searchsorted."""
    rng = np.random.default_rng(n_bounds)
    bounds = np.sort(rng.standard_normal(n_bounds).astype(np.float32))
    if n_bounds > 3:
        bounds[1] = bounds[2]  # a duplicate boundary: an empty bucket
    x = np.concatenate([rng.standard_normal(3000).astype(np.float32) * 2, bounds, SPECIALS])
    want = _ref("bucketize")(x, bounds, np.empty(x.shape, np.int32), 1)
    got = np.empty(x.shape, np.int32)
    _impl("bucketize", backend)(x, bounds, got, 1)
    np.testing.assert_array_equal(got, want)


@backend_param
def test_parallel_paths_match_reference(backend):
    """Inputs big enough for the threaded paths give the single-threaded answer."""
    rng = np.random.default_rng(20240602)
    x = (rng.standard_normal((2048, 1040)) * 4).astype(np.float32)  # > 2**21 elements
    x.ravel()[rng.integers(0, x.size, 3000)] = rng.choice(SPECIALS, 3000)
    n_cols = x.shape[1]
    mean = rng.standard_normal(n_cols).astype(np.float32)
    std = rng.uniform(0.1, 3, n_cols).astype(np.float32)
    low, high = np.full(n_cols, -1, np.float32), np.full(n_cols, 2, np.float32)
    fill = np.full(n_cols, 9, np.float32)
    bounds = np.sort(rng.standard_normal(40).astype(np.float32))
    flat = x.ravel()
    cases = {
        "standardize": lambda out: (x, mean, std, np.float32(3), out),
        "clip": lambda out: (x, low, high, fill, out),
        "log1p": lambda out: (flat, out.ravel()),
        "bucketize": lambda out: (flat, bounds, out.ravel()),
    }
    for op, args in cases.items():
        dtype = np.int64 if op == "bucketize" else np.float32
        want, got = np.empty(x.shape, dtype), np.empty(x.shape, dtype)
        _ref(op)(*args(want), 1)
        _impl(op, backend)(*args(got), 2)
        _assert_same_bits(got, want)


@backend_param
@pytest.mark.parametrize("op", ["standardize", "clip", "log1p", "bucketize"])
def test_examples_agree_with_reference(backend, op):
    impl = _impl(op, backend)
    for size in ("small", "batch", "typical", "large"):
        args, kwargs = REGISTRY.example(op, size)
        *inputs, out, n_threads = args
        want = _ref(op)(*inputs, np.empty_like(out), n_threads)
        impl(*args, **kwargs)
        _assert_same_bits(out, want)


def test_log1p_extension_constants_are_log1p_at_the_domain_edges():
    below_minus_one = np.nextafter(np.float32(-1), np.float32(0))
    assert LOG1P_FLOOR == np.float32(np.log1p(np.float64(below_minus_one)))
    assert LOG1P_CEIL == np.float32(np.log1p(np.float64(F32_MAX)))
    assert -16.64 < LOG1P_FLOOR < -16.63 and 88.72 < LOG1P_CEIL < 88.73


# -- the rules, through the public API (whichever backend is chosen) ---------------------


@settings(max_examples=50, deadline=None)
@given(data=st.data(), x=MATRIX)
def test_standardize_equals_numpy_expression_with_rules(data, x):
    n_cols = x.shape[1]
    mean = data.draw(_columns(n_cols, st.floats(-1e6, 1e6, width=32)), label="mean")
    std = data.draw(_columns(n_cols, st.floats(0, 1e6, width=32)), label="std")
    got = standardize(x, mean, std, max_z=50.0)
    with np.errstate(all="ignore"):
        z = (x - mean) / np.where(std == 0, np.float32(1), std)
        want = np.where(np.isnan(x), np.float32(0), np.clip(z, -50, 50)).astype(np.float32)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and np.isfinite(got).all()


def test_standardize_rules():
    x = np.array([[np.nan, np.inf, -np.inf, 3.0, 3e38, 5.0]], np.float32)
    mean = np.array([1, 1, 1, 1, -3e38, 5], np.float32)
    std = np.array([2, 2, 2, 2, 1e-30, 0], np.float32)
    got = standardize(x, mean, std, max_z=8)
    np.testing.assert_array_equal(got, [[0.0, 8.0, -8.0, 1.0, 8.0, 0.0]])
    # Default max_z only touches values 10,000 standard deviations out.
    np.testing.assert_array_equal(
        standardize(np.array([1e5, -1e5, 9999], np.float32), 0.0, 1.0), [1e4, -1e4, 9999]
    )


@settings(max_examples=50, deadline=None)
@given(data=st.data(), x=MATRIX)
def test_clip_equals_numpy_clip_with_nan_fill(data, x):
    n_cols = x.shape[1]
    a = data.draw(_columns(n_cols, st.floats(width=32, allow_nan=False)), label="a")
    b = data.draw(_columns(n_cols, st.floats(width=32, allow_nan=False)), label="b")
    low, high = np.minimum(a, b), np.maximum(a, b)
    got = clip(x, low, high, nan_fill=-7.0)
    want = np.where(np.isnan(x), np.float32(-7), np.clip(x, low, high))
    np.testing.assert_array_equal(got, want)


def test_clip_rules():
    x = np.array([np.nan, np.inf, -np.inf, 0.5, -0.0], np.float32)
    got = clip(x, 0.0, 1.0, nan_fill=-1.0)
    np.testing.assert_array_equal(got, [-1.0, 1.0, 0.0, 0.5, 0.0])
    assert np.signbit(got[4]), "x equal to a bound is kept as is (-0.0 stays -0.0)"
    one_sided = clip(np.array([-np.inf, 5, np.inf], np.float32), 0.0, np.inf)
    np.testing.assert_array_equal(one_sided, [0.0, 5.0, np.inf])
    per_column = clip(np.array([[5, 5], [-5, -5]], np.float32), [0, -1], [1, 3], nan_fill=[0, 0])
    np.testing.assert_array_equal(per_column, [[1, 3], [0, -1]])


@settings(max_examples=50, deadline=None)
@given(x=hnp.arrays(np.float32, st.integers(0, 60), elements=ANY_F32))
def test_log1p_is_finite_monotone_and_accurate(x):
    got = log1p(x)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    order = np.argsort(np.where(np.isnan(x), 0, x), kind="stable")
    assert (np.diff(got[order].astype(np.float64)) >= 0).all(), "non-decreasing in x (NaN as 0)"
    inside = np.isfinite(x) & (x > -1)
    with np.errstate(all="ignore"):
        rounded = np.log1p(x[inside].astype(np.float64)).astype(np.float32)
        np.testing.assert_array_max_ulp(got[inside], rounded, maxulp=1)
        # float32 np.log1p is at most a few ulps from the rounded float64 result.
        np.testing.assert_array_max_ulp(got[inside], np.log1p(x[inside]), maxulp=3)


def test_log1p_is_correctly_rounded_on_a_large_sample():
    """Over 600k values spanning every binade, equal to the float64 log1p rounded."""
    rng = np.random.default_rng(20240603)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-100, 88.7, 200_000)).astype(np.float32),
            -np.exp(rng.uniform(-100, 0, 200_000)).astype(np.float32),
            np.frombuffer(rng.bytes(800_000), np.float32),
        ]
    )
    x = x[np.isfinite(x) & (x > -1)]
    rounded = np.log1p(x.astype(np.float64)).astype(np.float32)
    _assert_same_bits(log1p(x), rounded)


def test_log1p_rules():
    x = np.array([np.nan, -1.0, -1.5, -np.inf, np.inf, 0.0, F32_MAX], np.float32)
    got = log1p(x)
    np.testing.assert_array_equal(
        got, [0.0, LOG1P_FLOOR, LOG1P_FLOOR, LOG1P_FLOOR, LOG1P_CEIL, 0.0, LOG1P_CEIL]
    )


@settings(max_examples=50, deadline=None)
@given(
    x=MATRIX,
    bounds=hnp.arrays(
        np.float32, st.integers(0, 30), elements=st.floats(width=32, allow_nan=False)
    ),
)
def test_bucketize_equals_searchsorted_right_with_nan_bucket(x, bounds):
    bounds = np.sort(bounds)
    got = bucketize(x, bounds)
    want = np.searchsorted(bounds, x, side="right")
    want[np.isnan(x)] = len(bounds) + 1
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int32 and got.shape == x.shape


def test_bucketize_rules():
    bounds = [0.0, 1.0, 1.0, 2.0]
    x = np.array([-np.inf, -1, 0, 0.5, 1, 1.5, 2, np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(bucketize(x, bounds), [0, 0, 1, 1, 3, 3, 4, 4, 5])
    wide = bucketize(x, bounds, dtype=np.int64)
    assert wide.dtype == np.int64
    np.testing.assert_array_equal(bucketize(x, []), [0] * 8 + [1])


# -- shapes, out=, parameters ----------------------------------------------------------


def test_one_dimensional_x_is_one_row():
    rng = np.random.default_rng(3)
    row = rng.standard_normal(6).astype(np.float32)
    mean, std = rng.standard_normal(6), rng.uniform(1, 2, 6)  # float64: converted
    got = standardize(row, mean, std)
    assert got.shape == (6,)
    np.testing.assert_array_equal(got, standardize(row[None, :], mean, std)[0])
    np.testing.assert_array_equal(clip(row, -0.5, [0.5] * 6), clip(row[None], -0.5, 0.5)[0])
    assert log1p(row).shape == (6,) and bucketize(row, [0.0]).shape == (6,)


def test_noncontiguous_x_gives_contiguous_answer():
    rng = np.random.default_rng(4)
    big = rng.standard_normal((9, 12)).astype(np.float32)
    for x in (big[:, ::2], big.T, big[::3]):
        n_cols = x.shape[1]
        copy = np.ascontiguousarray(x)
        mean, std = np.ones(n_cols), np.full(n_cols, 2.0)
        _assert_same_bits(standardize(x, mean, std), standardize(copy, mean, std))
        _assert_same_bits(clip(x, -1, 1), clip(copy, -1, 1))
        _assert_same_bits(log1p(x), log1p(copy))
        _assert_same_bits(bucketize(x, [0.0, 1.0]), bucketize(copy, [0.0, 1.0]))


def test_empty_inputs():
    for shape in [(0, 4), (3, 0), (0,)]:
        x = np.empty(shape, np.float32)
        n_cols = 0 if len(shape) == 1 else shape[1]
        assert standardize(x, np.zeros(n_cols), np.ones(n_cols)).shape == shape
        assert clip(x, 0, 1).shape == shape
        assert log1p(x).shape == shape
        assert bucketize(x, [1.0]).shape == shape


def test_out_parameter_and_in_place():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    want = standardize(x, 0.5, 2.0)
    out = np.empty_like(x)
    assert standardize(x, 0.5, 2.0, out=out) is out
    _assert_same_bits(out, want)
    y = x.copy()
    assert clip(y, -0.1, 0.1, out=y) is y
    _assert_same_bits(y, clip(x, -0.1, 0.1))
    y = x.copy()
    log1p(y, out=y)
    _assert_same_bits(y, log1p(x))
    ids = np.empty(x.shape, np.int64)
    assert bucketize(x, [0.0], out=ids) is ids and ids.dtype == np.int64


@pytest.mark.parametrize(
    ("make_out", "error", "match"),
    [
        (lambda x: np.empty(x.shape, np.float64), TypeError, r"out must have dtype float32"),
        (lambda x: np.empty((4, 3), np.float32), ValueError, r"out must have x's shape \(4, 4\)"),
        (lambda x: np.empty((4, 8), np.float32)[:, ::2], ValueError, r"out must be C-contiguous"),
        (lambda x: [0.0] * 16, TypeError, r"out must be a NumPy array"),
        (lambda x: np.broadcast_to(np.float32(0), x.shape), ValueError, r"out must be"),
    ],
)
def test_bad_out_is_rejected(make_out, error, match):
    x = np.zeros((4, 4), np.float32)
    with pytest.raises(error, match=match):
        log1p(x, out=make_out(x))
    with pytest.raises(error, match=match):
        clip(x, 0, 1, out=make_out(x))


def test_partly_overlapping_out_is_rejected():
    buf = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="out overlaps x"):
        log1p(buf[:10], out=buf[5:15])
    with pytest.raises(ValueError, match="out overlaps x"):
        bucketize(buf[:10], [0.0], out=buf[:10].view(np.int32))
    with pytest.raises(TypeError, match=r"out must have dtype int32 or int64"):
        bucketize(buf[:10], [0.0], out=np.empty(10, np.float32))


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (np.zeros((2, 2), np.float64), TypeError, r"x must have dtype float32, got float64"),
        (np.zeros((2, 2), np.int32), TypeError, r"x must have dtype float32, got int32"),
        ([[1.0, 2.0]], TypeError, r"x must be a float32 NumPy array, got list"),
        (np.zeros((2, 2, 2), np.float32), ValueError, r"x must be float32\[n_rows, n_cols\]"),
        (np.float32(1.0), TypeError, r"x must be a float32 NumPy array"),
        (np.zeros((), np.float32), ValueError, r"got shape \(\)"),
    ],
)
def test_bad_x_is_rejected(x, error, match):
    for call in (
        lambda: standardize(x, 0.0, 1.0),
        lambda: clip(x, 0, 1),
        lambda: log1p(x),
        lambda: bucketize(x, [0.0]),
    ):
        with pytest.raises(error, match=match):
            call()


X = np.zeros((3, 4), np.float32)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: standardize(X, [0.0] * 3, 1.0),
            ValueError,
            r"mean must be a scalar or have shape \(4,\)",
        ),
        (
            lambda: standardize(X, 0.0, np.ones((4, 1))),
            ValueError,
            r"std must be a scalar or have shape",
        ),
        (lambda: standardize(X, ["a"] * 4, 1.0), TypeError, r"mean must be real numbers"),
        (lambda: standardize(X, "0", 1.0), TypeError, r"mean must be a real number"),
        (lambda: standardize(X, [1j] * 4, 1.0), TypeError, r"mean must be real numbers"),
        (lambda: standardize(X, [True] * 4, 1.0), TypeError, r"mean must be real numbers"),
        (lambda: standardize(X, [0, 0, np.nan, 0], 1.0), ValueError, r"mean must be finite"),
        (lambda: standardize(X, 1e39, 1.0), ValueError, r"mean must be finite"),
        (lambda: standardize(X, 0.0, np.inf), ValueError, r"std must be finite"),
        (
            lambda: standardize(X, 0.0, [1, 1, -1, 1]),
            ValueError,
            r"std must be >= 0, got -1.0 at column 2",
        ),
        (lambda: standardize(X, 0.0, 1.0, max_z=0), ValueError, r"max_z must be a positive finite"),
        (
            lambda: standardize(X, 0.0, 1.0, max_z=np.inf),
            ValueError,
            r"max_z must be a positive finite",
        ),
        (
            lambda: standardize(X, 0.0, 1.0, max_z=np.nan),
            ValueError,
            r"max_z must be a positive finite",
        ),
        (
            lambda: standardize(X, 0.0, 1.0, max_z="5"),
            TypeError,
            r"max_z must be a real number, got str",
        ),
        (
            lambda: standardize(X, 0.0, 1.0, max_z=True),
            TypeError,
            r"max_z must be a real number, got bool",
        ),
        (
            lambda: clip(X, 2.0, 1.0),
            ValueError,
            r"low must be <= high, got low=2.0 > high=1.0 at column 0",
        ),
        (lambda: clip(X, np.nan, 1.0), ValueError, r"low must not be NaN"),
        (lambda: clip(X, 0.0, [1, 1, np.nan, 1]), ValueError, r"high must not be NaN"),
        (lambda: clip(X, 0.0, 1.0, nan_fill=np.inf), ValueError, r"nan_fill must be finite"),
        (lambda: clip(X, None, 1.0), TypeError, r"low must be real numbers"),
        (
            lambda: bucketize(X, [1.0, 0.0]),
            ValueError,
            r"boundaries must be sorted ascending, got 1.0 before 0.0 at index 0",
        ),
        (lambda: bucketize(X, [0.0, np.nan]), ValueError, r"boundaries must not contain NaN"),
        (lambda: bucketize(X, [[0.0], [1.0]]), ValueError, r"boundaries must be 1-D"),
        (lambda: bucketize(X, 0.5), ValueError, r"boundaries must be 1-D"),
        (lambda: bucketize(X, ["a"]), TypeError, r"boundaries must be real numbers"),
        (
            lambda: bucketize(X, [0.0], dtype=np.float32),
            TypeError,
            r"dtype must be np.int32 or np.int64",
        ),
        (
            lambda: bucketize(X, [0.0], dtype="nonsense"),
            TypeError,
            r"dtype must be np.int32 or np.int64",
        ),
    ],
)
def test_bad_parameters_are_rejected(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_parameter_conversion_and_zero_std():
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    got = standardize(x, np.array([1, 2], dtype=np.int64), [0.0, 2.0])
    np.testing.assert_array_equal(got, [[0.0, 0.0], [2.0, 1.0]])
    np.testing.assert_array_equal(bucketize(x, np.array([2, 3], np.int16)), [[0, 1], [2, 2]])
