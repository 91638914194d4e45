"""NumPy reference for the numeric transforms: the test oracle and the last fallback.

Every function here is one backend of a registered op and takes the arguments that
``transforms.py`` has already validated (the rules themselves are documented there):

- ``standardize(x, mean, std, max_z, out, n_threads)``: ``x, out: float32[n_rows, n_cols]``
  C-contiguous (``out`` may be ``x``); ``mean, std: float32[n_cols]`` finite, with every
  ``std`` > 0 (zeros already replaced by 1); ``max_z``: a positive finite float32.
- ``clip(x, low, high, nan_fill, out, n_threads)``: ``low, high, nan_fill: float32[n_cols]``,
  ``low <= high``, no NaN.
- ``log1p(x, out, n_threads)``: ``x, out: float32[n]`` (any shape flattened; ``out`` may
  be ``x``).
- ``bucketize(x, boundaries, out, n_threads)``: ``x: float32[n]``; ``boundaries:
  float32[n_bounds]`` ascending, no NaN; ``out: int32[n]`` or ``int64[n]``.

Each returns ``out``. ``n_threads`` is accepted for a uniform signature and ignored here.
"""

from __future__ import annotations

import numpy as np

# log1p in float64 for float32 x > -1: ``u = 1 + x`` (exact unless |x| < 2**-29, where
# log1p(x) rounds to x anyway), ``u = z * 2**k`` with z in [sqrt(1/2), sqrt(2)), then
# fdlibm's polynomial for log(z) (error < 1 ulp of float64). Every backend runs exactly this
# arithmetic in this order, so results are bit-identical without depending on a libm, and
# rounding to float32 gives the correctly rounded log1p in all but ~1e-8 of cases.
LG1 = 6.666666666666735130e-01
LG2 = 3.999999999940941908e-01
LG3 = 2.857142874366239149e-01
LG4 = 2.222219843214978396e-01
LG5 = 1.818357216161805012e-01
LG6 = 1.531383769920937332e-01
LG7 = 1.479819860511658591e-01
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
# fdlibm's split point just below sqrt(0.5): zero low word, so k can be computed from the
# high 32 bits alone (the Cython kernel does; the result is the same).
SQRT_HALF_BITS = 0x3FE6A09E00000000
LOG1P_TINY = np.float32(2.0**-29)


def log1p_domain(x: np.ndarray) -> np.ndarray:
    """The log1p above for ``x: float32[n]`` with every x finite and > -1."""
    u = 1.0 + x.astype(np.float64)
    ix = u.view(np.int64)
    k = (ix - SQRT_HALF_BITS) >> 52
    z = (ix - (k << 52)).view(np.float64)
    dk = k.astype(np.float64)
    f = z - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z2 = s * s
    w = z2 * z2
    t1 = w * (LG2 + w * (LG4 + w * LG6))
    t2 = z2 * (LG1 + w * (LG3 + w * (LG5 + w * LG7)))
    r = s * (hfsq + (t2 + t1)) + dk * LN2_LO - hfsq + f + dk * LN2_HI
    return np.where(np.abs(x) < LOG1P_TINY, x, r.astype(np.float32))


# log1p's finite extension (see transforms.py): its values at the smallest float32 above
# -1 and at the largest finite float32.
LOG1P_FLOOR, LOG1P_CEIL = log1p_domain(
    np.array([np.nextafter(np.float32(-1), np.float32(0)), np.finfo(np.float32).max])
)


def standardize(x, mean, std, max_z, out, n_threads: int = 1):
    """``(x - mean) / std`` in float32, clamped to ``[-max_z, max_z]``; NaN -> 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        return _standardize(x, mean, std, max_z, out)


def _standardize(x, mean, std, max_z, out):
    np.subtract(x, mean, out=out)
    np.divide(out, std, out=out)
    # With finite mean and positive finite std, out is NaN exactly where x was NaN.
    nan = np.isnan(out)
    np.clip(out, -max_z, max_z, out=out)
    out[nan] = 0.0
    return out


def clip(x, low, high, nan_fill, out, n_threads: int = 1):
    """``low`` below it, ``high`` above it, ``x`` otherwise; NaN -> ``nan_fill``."""
    # Masks first (out may be x); np.putmask, not np.clip/np.maximum: which of two equal
    # zeros those return (-0.0 vs 0.0) depends on their SIMD code, while here x is kept
    # unless it is strictly beyond a bound. putmask repeats its values over the flat
    # index, which for C-contiguous [n_rows, n_cols] is the per-column broadcast.
    below = x < low
    above = x > high
    nan = np.isnan(x)
    if out.size == 0:
        return out
    if out is not x:
        np.copyto(out, x)
    np.putmask(out, below, low)
    np.putmask(out, above, high)
    np.putmask(out, nan, nan_fill)
    return out


def log1p(x, out, n_threads: int = 1):
    """``log1p(x)`` (see ``log1p_domain``); NaN -> 0, x <= -1 -> LOG1P_FLOOR, +inf -> CEIL."""
    nan = np.isnan(x)
    low = x <= -1
    high = x == np.inf
    inside = ~(nan | low | high)
    # Fill the result before writing out: out may be x.
    result = np.zeros(x.shape, dtype=np.float32)
    result[inside] = log1p_domain(x[inside])
    result[low] = LOG1P_FLOOR
    result[high] = LOG1P_CEIL
    out[...] = result
    return out


def bucketize(x, boundaries, out, n_threads: int = 1):
    """``np.searchsorted(boundaries, x, side="right")``; NaN -> ``len(boundaries) + 1``."""
    nan = np.isnan(x)
    out[...] = np.searchsorted(boundaries, x, side="right")
    out[nan] = len(boundaries) + 1
    return out
