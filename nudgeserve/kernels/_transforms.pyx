"""Cython numeric transforms; same arguments and results as ``_transforms_ref``.

Rows are split over OpenMP threads when the matrix is large enough; the per-element work is
branch-free selects so the inner loops vectorise. Float arithmetic is plain IEEE float32
(``log1p``: float64, rounded), in the same order as the reference, so results are
bit-identical to it (the constants and log1p's polynomial come from ``_transforms_ref``).
"""

from cython.parallel cimport prange
from libc.math cimport INFINITY, fabsf
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from . import _transforms_ref

# Below these sizes (elements) one thread is faster than waking the OpenMP team: the
# cheap ops are memory-bound and only pay off on large matrices.
cdef Py_ssize_t PARALLEL_MIN_CHEAP = 1 << 21
cdef Py_ssize_t PARALLEL_MIN_COSTLY = 1 << 15
# Up to this many boundaries bucketize counts instead of searching (measured crossover).
cdef Py_ssize_t LINEAR_MAX_BOUNDS = 24
PARALLEL_MIN_ELEMENTS = {"standardize": PARALLEL_MIN_CHEAP, "clip": PARALLEL_MIN_CHEAP,
                         "log1p": PARALLEL_MIN_COSTLY, "bucketize": PARALLEL_MIN_COSTLY}

cdef float LOG1P_FLOOR = _transforms_ref.LOG1P_FLOOR
cdef float LOG1P_CEIL = _transforms_ref.LOG1P_CEIL
assert _transforms_ref.SQRT_HALF_BITS == 0x3FE6A09E00000000  # the high word used below
assert _transforms_ref.LOG1P_TINY == 1.862645149230957e-09

# Chunks per thread for the element-wise ops split into spans.
cdef Py_ssize_t CHUNKS_PER_THREAD = 4

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


cdef inline float log1p_domain(float v) noexcept nogil:
    """``_transforms_ref.log1p_domain`` for one finite v > -1: the same float64 arithmetic,
    in the same order (the build must not contract it into FMAs), so bit-identical."""
    cdef double u = 1.0 + <double>v
    cdef uint64_t ix
    cdef int32_t hx, k
    cdef double z, dk, f, hfsq, s, z2, w, t1, t2, r
    cdef float rounded
    # On the high word only (32-bit integer ops vectorise on any x86-64): the same k and z
    # as the reference's 64-bit formula because SQRT_HALF_BITS has a zero low word.
    memcpy(&ix, &u, 8)
    hx = <int32_t>(ix >> 32)
    k = (hx - 0x3FE6A09E) >> 20
    ix = (<uint64_t><uint32_t>(hx - (k << 20)) << 32) | (ix & 0xFFFFFFFFu)
    memcpy(&z, &ix, 8)
    dk = <double>k
    f = z - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z2 = s * s
    w = z2 * z2
    t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                                              + w * 1.531383769920937332e-01))
    t2 = z2 * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
               + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)))
    r = (s * (hfsq + (t2 + t1)) + dk * 1.90821492927058770002e-10 - hfsq + f
         + dk * 6.93147180369123816490e-01)
    # Rounded unconditionally, then selected: a conversion inside a branch is not
    # if-converted (it can raise FP flags), which would stop the loop vectorising.
    rounded = <float>r
    return v if fabsf(v) < 1.862645149230957e-09 else rounded  # 2**-29: log1p(v) rounds to v


cdef void log1p_span(const float* x, float* out, Py_ssize_t n) noexcept nogil:
    # A plain loop from 0 in its own function vectorises; inside prange it does not.
    # Selects, not branches: NaN, <= -1 and +inf evaluate the polynomial at 0 and are then
    # replaced.
    cdef Py_ssize_t i
    cdef float v, r
    # Locals, not the module globals: a store through out could alias a global, which
    # would force a conditional reload and stop the loop vectorising.
    cdef float floor = LOG1P_FLOOR
    cdef float ceiling = LOG1P_CEIL
    for i in range(n):
        v = x[i]
        r = log1p_domain(v if (v > -1.0) & (v < INFINITY) else 0.0)
        r = floor if v <= -1.0 else r
        out[i] = ceiling if v == INFINITY else r


def log1p(const float[::1] x, float[::1] out, int n_threads=1):
    """``out = log1p(x)`` (see ``_transforms_ref.log1p_domain``); NaN -> 0,
    x <= -1 -> floor, +inf -> ceiling."""
    cdef Py_ssize_t n = x.shape[0]
    cdef Py_ssize_t c, lo, hi
    cdef int team = _team(n, n_threads, PARALLEL_MIN_COSTLY)
    cdef Py_ssize_t n_chunks = team * CHUNKS_PER_THREAD
    if n == 0:
        return out.base
    with nogil:
        for c in prange(n_chunks, schedule="static", num_threads=team):
            lo = c * n // n_chunks
            hi = (c + 1) * n // n_chunks
            log1p_span(&x[0] + lo, &out[0] + lo, hi - lo)
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
