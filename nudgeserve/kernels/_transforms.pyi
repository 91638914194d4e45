"""Stub for the compiled numeric transforms (``_transforms.pyx``).

Arguments are validated by ``transforms.py`` beforehand (C-contiguous float32, per-column
parameters of length ``n_cols``); each writes ``out`` (which may be ``x``) and returns it.
"""

import numpy as np
import numpy.typing as npt

PARALLEL_MIN_ELEMENTS: dict[str, int]

def standardize(
    x: npt.NDArray[np.float32],
    mean: npt.NDArray[np.float32],
    std: npt.NDArray[np.float32],
    max_z: float,
    out: npt.NDArray[np.float32],
    n_threads: int = 1,
) -> npt.NDArray[np.float32]:
    """``out = clamp((x - mean) / std, -max_z, max_z)``, NaN -> 0, for
    ``x, out: float32[n_rows, n_cols]``, ``mean, std: float32[n_cols]`` (std > 0)."""

def clip(
    x: npt.NDArray[np.float32],
    low: npt.NDArray[np.float32],
    high: npt.NDArray[np.float32],
    nan_fill: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    n_threads: int = 1,
) -> npt.NDArray[np.float32]:
    """``out = low if x < low, high if x > high, else x``, NaN -> ``nan_fill``, for
    ``x, out: float32[n_rows, n_cols]`` and per-column ``float32[n_cols]`` parameters."""

def log1p(
    x: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    n_threads: int = 1,
) -> npt.NDArray[np.float32]:
    """``out = log1p(x)`` for ``x, out: float32[n]``, evaluated in float64 as
    ``_transforms_ref.log1p_domain`` does; NaN -> 0, ``x <= -1`` -> ``log1p(-1 + 2**-24)``,
    ``+inf`` -> ``log1p(float32 max)``."""

def bucketize(
    x: npt.NDArray[np.float32],
    boundaries: npt.NDArray[np.float32],
    out: npt.NDArray[np.int32] | npt.NDArray[np.int64],
    n_threads: int = 1,
) -> npt.NDArray[np.int32] | npt.NDArray[np.int64]:
    """``out = searchsorted(boundaries, x, side="right")`` for ``x: float32[n]`` and sorted
    ``boundaries: float32[n_bounds]``; NaN -> ``n_bounds + 1``."""
