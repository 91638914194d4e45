"""The Poisson bootstrap over keyed rows: per-replicate sums without a count matrix.

Every resampling statistic of the off-policy and impact reports is a function of a few
sums over rows; its bootstrap replicates are the same sums with row ``i`` counted a
Poisson(1) number of times in each replicate. The counts are a pure function of
``(seed, row key, replicate)`` (``_bootstrap_ref`` defines them), so replicate sums of any
partition of the rows add up to those of the whole: reports keyed by decision id get the
same intervals however the rows were split, and a report's seed reproduces it exactly.

Backends (chosen once per process, see ``_backend``): ``numba`` (``_bootstrap_numba``,
fused and parallel over replicates) and ``numpy`` (``_bootstrap_ref``, the oracle). Their
counts are identical; their sums agree to rounding.
"""

from __future__ import annotations

import numbers

import numpy as np

from nudgeserve.kernels._backend import REGISTRY
from nudgeserve.kernels._threads import get_num_threads

__all__ = ["poisson_bootstrap_counts", "poisson_bootstrap_sums"]


def check_bootstrap_seed(seed: object) -> int:
    """``seed`` as an int in ``[0, 2**64)`` (any integer type)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int in [0, 2**64), got {type(seed).__name__}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    return int(seed)


def check_n_bootstrap(n_bootstrap: object) -> int:
    """``n_bootstrap`` as a non-negative int."""
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral):
        raise TypeError(f"n_bootstrap must be an int, got {type(n_bootstrap).__name__}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    return int(n_bootstrap)


def check_keys(keys: object, n_rows: int | None = None) -> np.ndarray:
    """``keys`` as a C-contiguous ``uint64[n_rows]``.

    Any integer dtype is accepted; signed keys are reinterpreted modulo 2**64 (a key only
    has to be stable and distinct, and that reinterpretation keeps both).
    """
    arr = np.asarray(keys)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"keys must be an integer array (uint64 preferred), got dtype {arr.dtype}")
    if arr.ndim != 1 or (n_rows is not None and arr.shape[0] != n_rows):
        want = "n" if n_rows is None else n_rows
        raise ValueError(f"keys must have shape [{want}] (one key per row), got {arr.shape}")
    return np.ascontiguousarray(arr.astype(np.uint64, copy=False))


def check_stats(stats: object) -> np.ndarray:
    """``stats`` as a C-contiguous ``float64[n, K]``."""
    arr = np.asarray(stats)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"stats must be a real-valued array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"stats must have shape [n, K] (rows x columns), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def poisson_bootstrap_sums(
    keys: np.ndarray, stats: np.ndarray, n_bootstrap: int, seed: int
) -> np.ndarray:
    """Per-replicate column sums of ``stats`` under the Poisson bootstrap.

    Args:
        keys: uint64[n], a stable key per row (a row index, or a hash of the decision id;
            any integer array is converted); stats: float64[n, K] per-row columns;
        n_bootstrap: replicates ``>= 0``; seed: an int in ``[0, 2**64)``.

    Returns:
        float64[n_bootstrap, K]: ``sum_i count[b, i] * stats[i, :]`` with
        ``count = poisson_bootstrap_counts(keys, n_bootstrap, seed)``.
    """
    stats = check_stats(stats)
    keys = check_keys(keys, stats.shape[0])
    n_bootstrap = check_n_bootstrap(n_bootstrap)
    seed = check_bootstrap_seed(seed)
    impl = REGISTRY.get("poisson_bootstrap_sums")
    return impl(keys, stats, n_bootstrap, seed, get_num_threads())


def poisson_bootstrap_counts(keys: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """float64[n_bootstrap, n]: how many times row ``i`` enters replicate ``b``.

    keys: uint64[n]; seed: an int in ``[0, 2**64)``. The counts ``poisson_bootstrap_sums``
    weights rows by, as a matrix (for tests and inspection; the sums never build it).
    """
    from nudgeserve.kernels._bootstrap_ref import poisson_bootstrap_counts as counts

    return counts(check_keys(keys), check_n_bootstrap(n_bootstrap), check_bootstrap_seed(seed))


# ---------------------------------------------------------------- registration


def _load_numba():
    from nudgeserve.kernels._bootstrap_numba import poisson_bootstrap_sums as impl

    return impl


def _load_numpy():
    from nudgeserve.kernels._bootstrap_ref import poisson_bootstrap_sums as impl

    return impl


def _example(size: str) -> tuple[tuple, dict]:
    # typical: the decision-slot rows of a report and its 200 replicates, 7 summed columns.
    rows, n_bootstrap, columns = (64, 8, 3) if size == "small" else (20_000, 200, 7)
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, rows).astype(np.uint64)
    stats = rng.random((rows, columns))
    return (keys, stats, n_bootstrap, 0, get_num_threads()), {}


REGISTRY.register(
    "poisson_bootstrap_sums", {"numba": _load_numba, "numpy": _load_numpy}, example=_example
)
