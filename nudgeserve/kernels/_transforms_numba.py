"""Numba numeric transforms; same arguments and results as ``_transforms_ref``.

Each op is a serial kernel over a range of rows (or elements) plus a ``parallel=True``
driver that splits the range into chunks; the Python entry point picks the driver only
for inputs large enough to pay for starting threads. No ``fastmath``: results must stay
bit-identical to the reference.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from nudgeserve.kernels._transforms_ref import (
    LG1,
    LG2,
    LG3,
    LG4,
    LG5,
    LG6,
    LG7,
    LN2_HI,
    LN2_LO,
    LOG1P_CEIL,
    LOG1P_FLOOR,
    LOG1P_TINY,
    SQRT_HALF_BITS,
)

# Below these sizes (elements) one thread is faster than starting the thread team: the
# cheap ops are memory-bound and only pay off on large matrices.
PARALLEL_MIN_ELEMENTS = {
    "standardize": 1 << 21,
    "clip": 1 << 21,
    "log1p": 1 << 15,
    "bucketize": 1 << 15,
}
# Up to this many boundaries bucketize counts instead of searching (measured crossover:
# LLVM turns the binary search's conditional moves back into mispredicted branches).
LINEAR_MAX_BOUNDS = 1024
# Chunks per thread: evens out threads that start late.
_CHUNKS_PER_THREAD = 4

# error_model="numpy": no zero-divisor check per division (it blocks vectorisation; every
# divisor here is validated or guarded non-zero).
_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}
_F32_0 = np.float32(0.0)
_F32_M1 = np.float32(-1.0)
_F32_INF = np.float32(np.inf)

# Inputs are typed read-only so read-only arrays are accepted; writable ones convert free.
_RO_F32_1D = types.Array(types.float32, 1, "C", readonly=True)
_RO_F32_2D = types.Array(types.float32, 2, "C", readonly=True)
_F32_1D, _F32_2D = types.float32[::1], types.float32[:, ::1]
_f32, _i64, _void = types.float32, types.int64, types.void


@njit(_void(_RO_F32_2D, _RO_F32_1D, _RO_F32_1D, _f32, _F32_2D, _i64, _i64), **_OPTS)
def _standardize_rows(x, mean, std, max_z, out, lo, hi):
    neg = -max_z
    for i in range(lo, hi):
        for j in range(x.shape[1]):
            z = (x[i, j] - mean[j]) / std[j]
            z = max_z if z > max_z else z
            z = neg if z < neg else z
            out[i, j] = _F32_0 if z != z else z


@njit(_void(_RO_F32_2D, _RO_F32_1D, _RO_F32_1D, _f32, _F32_2D, _i64), parallel=True, **_OPTS)
def _standardize_parallel(x, mean, std, max_z, out, n_chunks):
    n = x.shape[0]
    for c in prange(n_chunks):
        _standardize_rows(x, mean, std, max_z, out, c * n // n_chunks, (c + 1) * n // n_chunks)


@njit(_void(_RO_F32_2D, _RO_F32_1D, _RO_F32_1D, _RO_F32_1D, _F32_2D, _i64, _i64), **_OPTS)
def _clip_rows(x, low, high, nan_fill, out, lo, hi):
    for i in range(lo, hi):
        for j in range(x.shape[1]):
            v = x[i, j]
            v = low[j] if v < low[j] else v
            v = high[j] if v > high[j] else v
            out[i, j] = nan_fill[j] if v != v else v


@njit(
    _void(_RO_F32_2D, _RO_F32_1D, _RO_F32_1D, _RO_F32_1D, _F32_2D, _i64),
    parallel=True,
    **_OPTS,
)
def _clip_parallel(x, low, high, nan_fill, out, n_chunks):
    n = x.shape[0]
    for c in prange(n_chunks):
        _clip_rows(x, low, high, nan_fill, out, c * n // n_chunks, (c + 1) * n // n_chunks)


@intrinsic
def _float64_bits(typingctx, value):
    """Reinterpret a float64 as int64 (a no-op bitcast Numba has no function for)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.int64))

    return types.int64(types.float64), codegen


@intrinsic
def _bits_float64(typingctx, bits):
    """Reinterpret an int64 as float64."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.int64), codegen


@njit(_f32(_f32), inline="always", **_OPTS)
def _log1p_domain(v):
    """``_transforms_ref.log1p_domain`` for one finite v > -1, same arithmetic and order."""
    u = 1.0 + np.float64(v)
    ix = _float64_bits(u)
    k = (ix - SQRT_HALF_BITS) >> 52
    z = _bits_float64(ix - (k << 52))
    dk = np.float64(k)
    f = z - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z2 = s * s
    w = z2 * z2
    t1 = w * (LG2 + w * (LG4 + w * LG6))
    t2 = z2 * (LG1 + w * (LG3 + w * (LG5 + w * LG7)))
    r = np.float32(s * (hfsq + (t2 + t1)) + dk * LN2_LO - hfsq + f + dk * LN2_HI)
    return v if abs(v) < LOG1P_TINY else r


@njit(_void(_RO_F32_1D, _F32_1D, _i64, _i64), **_OPTS)
def _log1p_range(x, out, lo, hi):
    # Slices, so the loop index starts at 0 (a range(lo, hi) index defeats LLVM's
    # vectoriser), and selects, not branches: NaN, <= -1 and +inf evaluate the polynomial
    # at 0 and are then replaced.
    xs = x[lo:hi]
    outs = out[lo:hi]
    for i in range(xs.shape[0]):
        v = xs[i]
        inside = (v > _F32_M1) & (v < _F32_INF)
        r = _log1p_domain(v if inside else _F32_0)
        r = LOG1P_FLOOR if v <= _F32_M1 else r
        outs[i] = LOG1P_CEIL if v == _F32_INF else r


@njit(_void(_RO_F32_1D, _F32_1D, _i64), parallel=True, **_OPTS)
def _log1p_parallel(x, out, n_chunks):
    n = x.shape[0]
    for c in prange(n_chunks):
        _log1p_range(x, out, c * n // n_chunks, (c + 1) * n // n_chunks)


_BUCKET_OUTS = (types.int32[::1], types.int64[::1])


@njit([_void(_RO_F32_1D, _RO_F32_1D, out, _i64, _i64) for out in _BUCKET_OUTS], **_OPTS)
def _bucketize_range(x, boundaries, out, lo, hi):
    n_bounds = boundaries.shape[0]
    xs = x[lo:hi]  # slices: a loop index starting at 0 vectorises
    outs = out[lo:hi]
    for i in range(xs.shape[0]):
        v = xs[i]
        if v != v:
            outs[i] = n_bounds + 1
            continue
        base = 0
        if n_bounds <= LINEAR_MAX_BOUNDS:
            # Few bounds: count them all (vectorised compare-and-add beats a search).
            for k in range(n_bounds):
                base += boundaries[k] <= v
            outs[i] = base
            continue
        # Branch-free upper bound: the step count depends only on n_bounds.
        size = n_bounds
        while size > 1:
            half = size >> 1
            base += half * (boundaries[base + half] <= v)
            size -= half
        outs[i] = base + (boundaries[base] <= v)


@njit([_void(_RO_F32_1D, _RO_F32_1D, out, _i64) for out in _BUCKET_OUTS], parallel=True, **_OPTS)
def _bucketize_parallel(x, boundaries, out, n_chunks):
    n = x.shape[0]
    for c in prange(n_chunks):
        _bucketize_range(x, boundaries, out, c * n // n_chunks, (c + 1) * n // n_chunks)


def _chunks(op: str, n_threads: int, size: int) -> int:
    """0 = run the serial kernel; otherwise the chunk count, with Numba's pool capped."""
    if n_threads <= 1 or size < PARALLEL_MIN_ELEMENTS[op]:
        return 0
    team = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != team:
        numba.set_num_threads(team)
    return team * _CHUNKS_PER_THREAD


def standardize(x, mean, std, max_z, out, n_threads: int = 1):
    """See ``_transforms_ref.standardize``."""
    n_chunks = _chunks("standardize", n_threads, x.size)
    if n_chunks:
        _standardize_parallel(x, mean, std, np.float32(max_z), out, n_chunks)
    else:
        _standardize_rows(x, mean, std, np.float32(max_z), out, 0, x.shape[0])
    return out


def clip(x, low, high, nan_fill, out, n_threads: int = 1):
    """See ``_transforms_ref.clip``."""
    n_chunks = _chunks("clip", n_threads, x.size)
    if n_chunks:
        _clip_parallel(x, low, high, nan_fill, out, n_chunks)
    else:
        _clip_rows(x, low, high, nan_fill, out, 0, x.shape[0])
    return out


def log1p(x, out, n_threads: int = 1):
    """See ``_transforms_ref.log1p``."""
    n_chunks = _chunks("log1p", n_threads, x.size)
    if n_chunks:
        _log1p_parallel(x, out, n_chunks)
    else:
        _log1p_range(x, out, 0, x.shape[0])
    return out


def bucketize(x, boundaries, out, n_threads: int = 1):
    """See ``_transforms_ref.bucketize``."""
    n_chunks = _chunks("bucketize", n_threads, x.size)
    if n_chunks:
        _bucketize_parallel(x, boundaries, out, n_chunks)
    else:
        _bucketize_range(x, boundaries, out, 0, x.shape[0])
    return out
