"""Input checks shared by the off-policy estimators: each error names the argument."""

from __future__ import annotations

import numbers

import numpy as np

from nudgeserve.models.errors import InvalidLogs, InvalidLogsType

# Probabilities may exceed 1, and distributions miss 1, by this much (rounding upstream).
SUM_TOLERANCE = 1e-6
# Rows per chunk times replicates (or actions) bounds the arrays built at once (~32 MiB).
CHUNK_CELLS = 1 << 22


def check_seed(seed: object) -> int:
    """The bootstrap seed as an int in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        raise InvalidLogs(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def int_array(name: str, x: object) -> np.ndarray:
    """``x`` as int64[n] (any integer dtype)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise InvalidLogsType(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.ndim != 1:
        raise InvalidLogs(f"{name} must be 1-D, got shape {a.shape}")
    return a.astype(np.int64, copy=False)


def float_array(name: str, x: object, ndim: int | tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise InvalidLogsType(f"{name} must be a numeric array, got dtype {a.dtype}")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if a.ndim not in allowed:
        dims = " or ".join(map(str, allowed))
        raise InvalidLogs(f"{name} must have {dims} dimensions, got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise InvalidLogs(f"{name} must be finite (found nan or inf)")
    return a


def check_propensities(name: str, p: np.ndarray) -> None:
    if p.size and (p.min() <= 0.0 or p.max() > 1.0):
        raise InvalidLogs(
            f"{name} must be in (0, 1]; found values in [{p.min():.6g}, {p.max():.6g}]"
        )


def check_probabilities(name: str, values: np.ndarray, totals: np.ndarray, first_row: int):
    """values: the probabilities (any shape); totals: their sum per row and position."""
    if values.size and (values.min() < 0.0 or values.max() > 1.0 + SUM_TOLERANCE):
        raise InvalidLogs(f"{name} must hold probabilities in [0, 1]")
    if totals.size:
        error = np.abs(totals - 1.0)
        if error.max() > SUM_TOLERANCE:
            bad = np.unravel_index(error.argmax(), totals.shape)
            raise InvalidLogs(
                f"{name} must sum to 1 over actions; row {first_row + int(bad[0])} sums to "
                f"{float(totals[bad]):.6g}"
            )


def check_settings(n_bootstrap: object, max_weight: object, confidence: object) -> None:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int | np.integer):
        raise InvalidLogsType(f"n_bootstrap must be an int, got {n_bootstrap!r}")
    if n_bootstrap < 2:
        raise InvalidLogs(f"n_bootstrap must be >= 2, got {n_bootstrap}")
    if isinstance(max_weight, bool) or not isinstance(max_weight, int | float):
        raise InvalidLogsType(f"max_weight must be a number, got {max_weight!r}")
    if not max_weight > 0:
        raise InvalidLogs(f"max_weight must be > 0, got {max_weight!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise InvalidLogsType(f"confidence must be a number, got {confidence!r}")
    if not 0.0 < confidence < 1.0:
        raise InvalidLogs(f"confidence must be in (0, 1), got {confidence!r}")


def validate_settings(
    *, n_bootstrap: object, max_weight: object, confidence: object, seed: object
) -> int:
    """Check the evaluation settings (raising errors that name them); returns the seed."""
    check_settings(n_bootstrap, max_weight, confidence)
    return check_seed(seed)


def check_keys(keys: object, n: int) -> np.ndarray:
    """Bootstrap keys as uint64[n]; None: the row index."""
    if keys is None:
        return np.arange(n, dtype=np.uint64)
    a = np.asarray(keys)
    if a.dtype.kind not in "iu" or a.shape != (n,):
        raise InvalidLogs(
            f"bootstrap_keys must be an integer array of shape ({n},), got {a.dtype} {a.shape}"
        )
    return a.astype(np.uint64, copy=False)
