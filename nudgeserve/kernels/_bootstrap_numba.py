"""Numba Poisson bootstrap: ``_bootstrap_ref``'s contract (read there for the semantics),
fused and compiled.

Counter -> Poisson count -> weighted sum in one pass: no ``[B, n]`` count matrix in
memory. Rows go in cache-sized blocks; replicates are independent (each has its own
accumulator), so they run in parallel for large jobs. The counts are bit-identical to the
reference's (the same integer operations on ``rng``'s constants); the sums add each
replicate's rows in row order, block by block, whichever kernel runs, so the serial and
the parallel kernel return the same bits.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from nudgeserve.kernels import rng
from nudgeserve.kernels._bootstrap_ref import POISSON1_THRESHOLDS, row_hashes

# Rows x replicates below which the kernel runs on one thread: small jobs take
# milliseconds, and waking a thread team costs more than it saves (much more on a busy
# machine).
PARALLEL_MIN_CELLS = 1 << 20
# Rows summed per block: a block of stats stays in cache while every replicate reads it.
_ROW_BLOCK = 4096

_opts = {"cache": True, "nogil": True}

# Module globals are compile-time constants to numba.
_GAMMA = rng.GAMMA
_MIX1 = rng.MIX1
_MIX2 = rng.MIX2

_SIG = "void(uint64[::1], float64[:, ::1], uint64[::1], float64[:, ::1])"


@njit(
    "void(uint64[::1], float64[:, ::1], uint64[::1], float64[:, ::1], int64, int64, int64)", **_opts
)
def _replicate_block(row_hash, stats, thresholds, out, b, start, stop):
    """Adds rows ``[start, stop)`` of replicate ``b`` to ``out[b]``."""
    k = stats.shape[1]
    n_thresholds = thresholds.shape[0]
    # The first four thresholds are compared without branches: the count is below 4 for
    # 98% of draws, and data-dependent branches there cost more than the compares.
    t0, t1, t2, t3 = thresholds[0], thresholds[1], thresholds[2], thresholds[3]
    acc = np.zeros(k, dtype=np.float64)
    offset = np.uint64(b) * _GAMMA + _GAMMA
    for i in range(start, stop):
        z = row_hash[i] + offset
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
        count = np.int64(z >= t0) + np.int64(z >= t1) + np.int64(z >= t2) + np.int64(z >= t3)
        if count == 4:
            while count < n_thresholds and z >= thresholds[count]:
                count += 1
        c = np.float64(count)
        for j in range(k):
            acc[j] += c * stats[i, j]
    for j in range(k):
        out[b, j] += acc[j]


@njit(_SIG, **_opts)
def _sums(row_hash, stats, thresholds, out):
    n = stats.shape[0]
    for start in range(0, n, _ROW_BLOCK):
        stop = min(n, start + _ROW_BLOCK)
        for b in range(out.shape[0]):
            _replicate_block(row_hash, stats, thresholds, out, b, start, stop)


@njit(_SIG, parallel=True, **_opts)
def _sums_parallel(row_hash, stats, thresholds, out):
    n = stats.shape[0]
    for start in range(0, n, _ROW_BLOCK):
        stop = min(n, start + _ROW_BLOCK)
        for b in prange(out.shape[0]):
            _replicate_block(row_hash, stats, thresholds, out, b, start, stop)


def _parallel(n_threads: int, n_rows: int, n_bootstrap: int) -> bool:
    if n_threads <= 1 or n_bootstrap <= 1 or n_rows * n_bootstrap < PARALLEL_MIN_CELLS:
        return False
    threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    # Numba's thread count is per calling thread; a server thread may not have set it.
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return True


def poisson_bootstrap_sums(
    keys: np.ndarray, stats: np.ndarray, n_bootstrap: int, seed: int, n_threads: int = 1
) -> np.ndarray:
    """See ``_bootstrap_ref.poisson_bootstrap_sums``."""
    out = np.zeros((n_bootstrap, stats.shape[1]), dtype=np.float64)
    if n_bootstrap == 0 or stats.shape[0] == 0:
        return out
    row_hash = row_hashes(keys, seed)
    kernel = _sums_parallel if _parallel(n_threads, stats.shape[0], n_bootstrap) else _sums
    kernel(row_hash, stats, POISSON1_THRESHOLDS, out)
    return out
