"""NumPy reference for the numeric transforms: the test oracle and the last fallback.

Every function here is one backend of a registered op and takes the arguments that
``transforms.py`` has already validated (the rules themselves are documented there):

- ``standardize(x, mean, std, max_z, out, n_threads)``: ``x, out: float32[n_rows, n_cols]``
  C-contiguous (``out`` may be ``x``); ``mean, std: float32[n_cols]`` finite, with every
  ``std`` > 0 (zeros already replaced by 1); ``max_z``: a positive finite float32.
- ``clip(x, low, high, nan_fill, out, n_threads)``: ``low, high, nan_fill: float32[n_cols]``,
  ``low <= high``, no NaN.
- ``log1p(x, out, n_threads)``: ``x, out: float32[n]`` (any shape flattened).
- ``bucketize(x, boundaries, out, n_threads)``: ``x: float32[n]``; ``boundaries:
  float32[n_bounds]`` ascending, no NaN; ``out: int32[n]`` or ``int64[n]``.

Each returns ``out``. ``n_threads`` is accepted for a uniform signature and ignored here.
"""

from __future__ import annotations

import numpy as np

# log1p's finite extension (see transforms.py): the values log1p takes, computed in float64
# and rounded, at the smallest float32 above -1 and at the largest finite float32.
LOG1P_FLOOR = np.float32(np.log1p(np.float64(np.nextafter(np.float32(-1), np.float32(0)))))
LOG1P_CEIL = np.float32(np.log1p(np.float64(np.finfo(np.float32).max)))


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
    """``float32(log1p(float64(x)))``; NaN -> 0, x <= -1 -> LOG1P_FLOOR, +inf -> LOG1P_CEIL."""
    nan = np.isnan(x)
    low = x <= -1
    high = x == np.inf
    wide = x.astype(np.float64)
    wide[nan | low] = 0.0  # keeps log1p from warning about its domain
    np.log1p(wide, out=wide)
    out[...] = wide  # rounds to float32; +inf stays inf until replaced below
    out[nan] = 0.0
    out[low] = LOG1P_FLOOR
    out[high] = LOG1P_CEIL
    return out


def bucketize(x, boundaries, out, n_threads: int = 1):
    """``np.searchsorted(boundaries, x, side="right")``; NaN -> ``len(boundaries) + 1``."""
    nan = np.isnan(x)
    out[...] = np.searchsorted(boundaries, x, side="right")
    out[nan] = len(boundaries) + 1
    return out
