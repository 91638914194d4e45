"""Cython numeric transforms; same arguments and results as ``_transforms_ref``.

Rows are split over OpenMP threads when the matrix is large enough; the per-element work is
branch-free selects so the inner loops vectorise. Float arithmetic is plain IEEE float32
(``log1p``: float64, rounded), in the same order as the reference, so results are
bit-identical to it.
"""

from cython.parallel cimport prange
from libc.float cimport FLT_MAX
from libc.math cimport INFINITY, log1p as c_log1p, nextafterf
from libc.stdint cimport int32_t, int64_t

# Below these sizes (elements) one thread is faster than waking the OpenMP team: the
# cheap ops are memory-bound and only pay off on large matrices.
cdef Py_ssize_t PARALLEL_MIN_CHEAP = 1 << 21
cdef Py_ssize_t PARALLEL_MIN_COSTLY = 1 << 15
# Up to this many boundaries bucketize counts instead of searching (measured crossover).
cdef Py_ssize_t LINEAR_MAX_BOUNDS = 24
PARALLEL_MIN_ELEMENTS = {"standardize": PARALLEL_MIN_CHEAP, "clip": PARALLEL_MIN_CHEAP,
                         "log1p": PARALLEL_MIN_COSTLY, "bucketize": PARALLEL_MIN_COSTLY}

cdef float LOG1P_FLOOR = <float>c_log1p(<double>nextafterf(-1.0, 0.0))
cdef float LOG1P_CEIL = <float>c_log1p(<double>FLT_MAX)

ctypedef fused bucket_t:
    int32_t
    int64_t


cdef inline int _team(Py_ssize_t size, int n_threads, Py_ssize_t threshold) noexcept nogil:
    return n_threads if n_threads > 1 and size >= threshold else 1


def standardize(const float[:, ::1] x, const float[::1] mean, const float[::1] std,
                float max_z, float[:, ::1] out, int n_threads=1):
    """``out = clamp((x - mean) / std, -max_z, max_z)``, NaN -> 0; returns ``out``."""
    cdef Py_ssize_t n_rows = x.shape[0]
    cdef Py_ssize_t n_cols = x.shape[1]
    cdef Py_ssize_t i, j
    cdef float z
    cdef int team = _team(n_rows * n_cols, n_threads, PARALLEL_MIN_CHEAP)
    with nogil:
        for i in prange(n_rows, schedule="static", num_threads=team):
            for j in range(n_cols):
                z = (x[i, j] - mean[j]) / std[j]
                z = max_z if z > max_z else z
                z = -max_z if z < -max_z else z
                out[i, j] = 0.0 if z != z else z
    return out.base


def clip(const float[:, ::1] x, const float[::1] low, const float[::1] high,
         const float[::1] nan_fill, float[:, ::1] out, int n_threads=1):
    """``out = low if x < low, high if x > high, else x``, NaN -> ``nan_fill``."""
    cdef Py_ssize_t n_rows = x.shape[0]
    cdef Py_ssize_t n_cols = x.shape[1]
    cdef Py_ssize_t i, j
    cdef float v, lo, hi, fill
    cdef int team = _team(n_rows * n_cols, n_threads, PARALLEL_MIN_CHEAP)
    with nogil:
        for i in prange(n_rows, schedule="static", num_threads=team):
            for j in range(n_cols):
                # Loaded unconditionally so the selects below compile to vector blends.
                v = x[i, j]
                lo = low[j]
                hi = high[j]
                fill = nan_fill[j]
                v = lo if v < lo else v
                v = hi if v > hi else v
                out[i, j] = fill if v != v else v
    return out.base


def log1p(const float[::1] x, float[::1] out, int n_threads=1):
    """``out = float32(log1p(float64(x)))``; NaN -> 0, x <= -1 -> floor, +inf -> ceiling."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t i
    cdef float v
    cdef int team = _team(n, n_threads, PARALLEL_MIN_COSTLY)
    with nogil:
        for i in prange(n, schedule="static", num_threads=team):
            v = x[i]
            if v != v:
                out[i] = 0.0
            elif v <= -1.0:
                out[i] = LOG1P_FLOOR
            elif v == INFINITY:
                out[i] = LOG1P_CEIL
            else:
                out[i] = <float>c_log1p(<double>v)
    return out.base


cdef inline Py_ssize_t upper_bound(const float* bounds, Py_ssize_t n, float v) noexcept nogil:
    """How many of ``bounds[:n]`` (sorted, n >= 1) are <= v.

    Few bounds: count them all (a vectorised compare-and-add beats any search). Many:
    branch-free binary search, whose step count depends only on n and whose steps are
    conditional moves, so random inputs cost no branch mispredictions.
    """
    cdef Py_ssize_t base = 0
    cdef Py_ssize_t half
    if n <= LINEAR_MAX_BOUNDS:
        for half in range(n):
            base += bounds[half] <= v
        return base
    while n > 1:
        half = n >> 1
        base = base + half if bounds[base + half] <= v else base
        n -= half
    return base + (bounds[base] <= v)


def bucketize(const float[::1] x, const float[::1] boundaries, bucket_t[::1] out,
              int n_threads=1):
    """``out = searchsorted(boundaries, x, side="right")``, NaN -> ``len(boundaries) + 1``."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t n_bounds = boundaries.shape[0]
    cdef Py_ssize_t i
    cdef float v
    cdef int team = _team(n, n_threads, PARALLEL_MIN_COSTLY)
    with nogil:
        for i in prange(n, schedule="static", num_threads=team):
            v = x[i]
            if v != v:
                out[i] = <bucket_t>(n_bounds + 1)
            elif n_bounds == 0:
                out[i] = 0
            else:
                out[i] = <bucket_t>upper_bound(&boundaries[0], n_bounds, v)
    return out.base
