"""Numeric feature transforms on float32 matrices, safe to feed a model.

``x`` is ``float32[n_rows, n_cols]`` (a batch of rows of features) or ``float32[n_cols]``
(one row: per-column parameters broadcast as NumPy would). The result has ``x``'s shape.
``x`` must already be float32 (a silent cast would hide a copy and a precision change);
parameters (``mean``, ``std``, ``low``, ``high``, ``nan_fill``, ``boundaries``) may be
Python numbers, sequences or arrays of any real dtype and are converted to float32 once.
Per-column parameters are a scalar (same for every column) or ``[n_cols]``.

Every function writes a new array, or ``out=`` when given: C-contiguous, ``x``'s shape and
the result dtype; ``out`` may be ``x`` itself (in place) but may not partly overlap it.

Non-finite values never reach a model (rules shared by every backend):

``standardize(x, mean, std, *, max_z=1e4)`` -> ``float32``
    ``(x - mean) / std`` in float32, clamped to ``[-max_z, max_z]``. NaN -> 0.0 (the
    mean: a missing value imputes the average); ``+inf``/``-inf`` -> ``+max_z``/``-max_z``,
    as does any finite value further than ``max_z`` standard deviations away (overflow
    included). ``std == 0`` (a constant column) is treated as 1. ``mean`` must be finite,
    ``std`` finite and >= 0. The default ``max_z`` only touches values 10,000 standard
    deviations out; pass e.g. ``max_z=5`` to winsorise.
``clip(x, low, high, *, nan_fill=0.0)`` -> ``float32``
    ``low`` where ``x < low``, ``high`` where ``x > high``, else ``x`` (so ``±inf`` go to
    the bounds). NaN -> ``nan_fill`` (not clipped: it can be a missing-value code outside
    the bounds). Bounds may be infinite (one-sided clip) but not NaN, ``low <= high``;
    ``nan_fill`` must be finite.
``log1p(x)`` -> ``float32``
    ``log(1 + x)`` evaluated in float64 (fdlibm's log polynomial, the same arithmetic in
    every backend, no libm involved) and rounded to float32: the correctly rounded result
    except in about 1 case in 10**8 (float32 ``np.log1p`` is one or two ulps off on ~10% of
    inputs). Extended to a finite, non-decreasing function: NaN -> 0.0 (as if 0);
    ``x <= -1`` (where log1p is -inf or undefined) -> ``log1p(-1 + 2**-24) ≈ -16.6355``,
    the least finite value it takes; ``+inf`` -> ``log1p(float32 max) ≈ 88.7228``.
``bucketize(x, boundaries, *, dtype=np.int32)`` -> ``int32`` or ``int64``
    The number of boundaries ``<= x``, i.e. ``np.searchsorted(boundaries, x, side="right")``:
    bucket 0 is ``x < boundaries[0]``, bucket ``i`` is ``boundaries[i-1] <= x <
    boundaries[i]``, bucket ``n_bounds`` is ``x >= boundaries[-1]`` (``-inf`` -> 0,
    ``+inf`` -> ``n_bounds``). NaN -> ``n_bounds + 1``, its own bucket, so an embedding
    table needs ``n_bounds + 2`` rows. ``boundaries`` is 1-D, non-decreasing, no NaN.

Backends (Cython, Numba, NumPy reference) give bit-identical results: the same IEEE
arithmetic in the same order (float32; float64 inside ``log1p``), with no FMA contraction
and no fast-math in any of them.
"""

from __future__ import annotations

import numbers

import numpy as np

from nudgeserve.kernels import _transforms_ref
from nudgeserve.kernels._backend import DEFAULT_ORDER, REGISTRY
from nudgeserve.kernels._threads import get_num_threads

__all__ = ["bucketize", "clip", "log1p", "standardize"]

DEFAULT_MAX_Z = 1e4
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _loaders(op: str) -> dict:
    def cython():
        from nudgeserve.kernels import _transforms

        return getattr(_transforms, op)

    def numba():
        from nudgeserve.kernels import _transforms_numba

        return getattr(_transforms_numba, op)

    return {"cython": cython, "numba": numba, "numpy": lambda: getattr(_transforms_ref, op)}


# "typical": 1,024 candidate rows x 64 features; "batch": one server batch, 64 requests x
# 80 candidates (the affinity matrix); "large": 4,096 rows x 64 features.
_EXAMPLE_SHAPES = {"small": (4, 64), "batch": (64, 80), "typical": (1024, 64), "large": (4096, 64)}


def _example_matrix(size: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(_EXAMPLE_SHAPES[size]) * 3 + 1).astype(np.float32)
    x[0, :4] = [np.nan, np.inf, -np.inf, -1.0]
    return x


def _example_standardize(size: str):
    x = _example_matrix(size)
    mean = np.full(x.shape[1], 1.0, dtype=np.float32)
    std = np.full(x.shape[1], 3.0, dtype=np.float32)
    return (x, mean, std, np.float32(DEFAULT_MAX_Z), np.empty_like(x), 1), {}


def _example_clip(size: str):
    x = _example_matrix(size)
    bounds = [np.full(x.shape[1], v, dtype=np.float32) for v in (-2.0, 4.0, 0.0)]
    return (x, *bounds, np.empty_like(x), 1), {}


def _example_log1p(size: str):
    x = _example_matrix(size).ravel()
    return (x, np.empty_like(x), 1), {}


def _example_bucketize(size: str):
    x = _example_matrix(size).ravel()
    boundaries = np.linspace(-5, 7, 15, dtype=np.float32)
    return (x, boundaries, np.empty(x.shape, dtype=np.int32), 1), {}


# gcc does not vectorise the Cython log1p (float64 polynomial, for bit-identical results),
# so Numba's is about 6x faster there (python -m benchmarks.kernels --only log1p).
_NUMBA_FIRST = ("numba", "cython", "numpy")

for _op, _example, _order in (
    ("standardize", _example_standardize, DEFAULT_ORDER),
    ("clip", _example_clip, DEFAULT_ORDER),
    ("log1p", _example_log1p, _NUMBA_FIRST),
    ("bucketize", _example_bucketize, DEFAULT_ORDER),
):
    REGISTRY.register(_op, _loaders(_op), example=_example, default_order=_order)


def _check_x(x: object) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a float32 NumPy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(
            f"x must have dtype float32, got {x.dtype}; convert it once with x.astype(np.float32)"
        )
    if x.ndim not in (1, 2):
        raise ValueError(
            f"x must be float32[n_rows, n_cols] or float32[n_cols], got shape {x.shape}"
        )
    return np.ascontiguousarray(x)


def _as_matrix(x: np.ndarray) -> np.ndarray:
    """A 1-D ``x`` is one row."""
    return x.reshape(1, -1) if x.ndim == 1 else x


def _float32_param(value: object, name: str) -> np.ndarray:
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        return value  # the common case on the hot path: nothing to convert
    if isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a real number or array of them, got {value!r}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a real number or array of them ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be real numbers (int or float), got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        return arr.astype(np.float32)


def _per_column(value: object, name: str, n_cols: int) -> np.ndarray:
    """``value`` as C-contiguous ``float32[n_cols]`` (a scalar broadcasts)."""
    arr = _float32_param(value, name)
    if arr.ndim == 0:
        return np.full(n_cols, arr, dtype=np.float32)
    if arr.shape != (n_cols,):
        raise ValueError(
            f"{name} must be a scalar or have shape ({n_cols},) to match x's {n_cols} "
            f"columns, got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr)


def _positive_float32(value: object, name: str) -> np.float32:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0 < float(value) <= _FLOAT32_MAX:  # NaN fails too
        raise ValueError(f"{name} must be a positive finite float32, got {value!r}")
    return np.float32(value)


def _check_out(out: object, x: np.ndarray, dtypes: tuple, default) -> np.ndarray:
    if out is None:
        return np.empty(x.shape, dtype=default)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.dtype not in dtypes:
        allowed = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise TypeError(f"out must have dtype {allowed}, got {out.dtype}")
    if out.shape != x.shape:
        raise ValueError(f"out must have x's shape {x.shape}, got {out.shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (the result is written through it)")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    same = out.ctypes.data == x.ctypes.data and out.dtype == x.dtype
    if not same and np.may_share_memory(out, x):
        raise ValueError("out overlaps x without being x; pass out=x or a separate array")
    return out


def _finite(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (no NaN or inf, nor values beyond float32)")


def standardize(x, mean, std, *, max_z: float = DEFAULT_MAX_Z, out=None) -> np.ndarray:
    """Z-scores ``(x - mean) / std``, clamped to ``[-max_z, max_z]``, NaN -> 0.

    x: float32[n_rows, n_cols] or float32[n_cols].
    mean, std: float or float32[n_cols] (any real dtype; converted); ``std == 0`` acts as 1.
    max_z: positive finite bound on ``|z|`` (also where ``±inf`` go).
    out: optional float32 array of x's shape (may be x).
    Returns float32 of x's shape (``out`` when given).
    """
    x = _check_x(x)
    n_cols = _as_matrix(x).shape[1]
    mean = _per_column(mean, "mean", n_cols)
    std = _per_column(std, "std", n_cols)
    _finite(mean, "mean")
    # One pass for the common case; NaN fails it too and is named by _finite below.
    if not (std >= 0).all() or not (std <= _FLOAT32_MAX).all():
        _finite(std, "std")
        j = int(np.argmax(std < 0))
        raise ValueError(f"std must be >= 0, got {std[j]} at column {j}")
    if (std == 0).any():
        std = np.where(std == 0, np.float32(1), std)
    max_z32 = _positive_float32(max_z, "max_z")
    out = _check_out(out, x, (np.float32,), np.float32)
    REGISTRY.get("standardize")(
        _as_matrix(x), mean, std, max_z32, _as_matrix(out), get_num_threads()
    )
    return out


def clip(x, low, high, *, nan_fill=0.0, out=None) -> np.ndarray:
    """``x`` clamped to ``[low, high]``; NaN -> ``nan_fill``.

    x: float32[n_rows, n_cols] or float32[n_cols].
    low, high: float or float32[n_cols] (any real dtype; converted); ``low <= high``,
        may be infinite, not NaN.
    nan_fill: finite float or float32[n_cols]: what NaN becomes (not clipped).
    out: optional float32 array of x's shape (may be x).
    Returns float32 of x's shape (``out`` when given).
    """
    x = _check_x(x)
    n_cols = _as_matrix(x).shape[1]
    low = _per_column(low, "low", n_cols)
    high = _per_column(high, "high", n_cols)
    nan_fill = _per_column(nan_fill, "nan_fill", n_cols)
    for arr, name in ((low, "low"), (high, "high")):
        if np.isnan(arr).any():
            raise ValueError(f"{name} must not be NaN")
    if (low > high).any():
        j = int(np.argmax(low > high))
        raise ValueError(f"low must be <= high, got low={low[j]} > high={high[j]} at column {j}")
    _finite(nan_fill, "nan_fill")
    out = _check_out(out, x, (np.float32,), np.float32)
    REGISTRY.get("clip")(_as_matrix(x), low, high, nan_fill, _as_matrix(out), get_num_threads())
    return out


def log1p(x, *, out=None) -> np.ndarray:
    """``log(1 + x)`` made finite: NaN -> 0, ``x <= -1`` -> -16.6355, ``+inf`` -> 88.7228.

    x: float32[n_rows, n_cols] or float32[n_cols].
    out: optional float32 array of x's shape (may be x).
    Returns float32 of x's shape (``out`` when given).
    """
    x = _check_x(x)
    out = _check_out(out, x, (np.float32,), np.float32)
    REGISTRY.get("log1p")(x.reshape(-1), out.reshape(-1), get_num_threads())
    return out


def bucketize(x, boundaries, *, dtype=np.int32, out=None) -> np.ndarray:
    """Bucket ids ``np.searchsorted(boundaries, x, side="right")``; NaN -> ``n_bounds + 1``.

    x: float32[n_rows, n_cols] or float32[n_cols].
    boundaries: float32[n_bounds] (any real dtype; converted), non-decreasing, no NaN.
    dtype: np.int32 or np.int64, the result dtype (ignored when ``out`` is given).
    out: optional int32 or int64 array of x's shape.
    Returns ``dtype`` (or ``out.dtype``) of x's shape, values in ``[0, n_bounds + 1]``.
    """
    x = _check_x(x)
    bounds = _float32_param(boundaries, "boundaries")
    if bounds.ndim != 1:
        raise ValueError(f"boundaries must be 1-D, got shape {bounds.shape}")
    bounds = np.ascontiguousarray(bounds)
    if np.isnan(bounds).any():
        raise ValueError("boundaries must not contain NaN")
    descending = bounds[1:] < bounds[:-1]  # not np.diff: inf - inf would warn
    if descending.any():
        j = int(np.argmax(descending))
        raise ValueError(
            f"boundaries must be sorted ascending, got {bounds[j]} before {bounds[j + 1]} "
            f"at index {j}"
        )
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be np.int32 or np.int64, got {dtype!r}") from None
    if dtype not in (np.int32, np.int64):
        raise TypeError(f"dtype must be np.int32 or np.int64, got {dtype}")
    out = _check_out(out, x, (np.int32, np.int64), dtype)
    REGISTRY.get("bucketize")(x.reshape(-1), bounds, out.reshape(-1), get_num_threads())
    return out
