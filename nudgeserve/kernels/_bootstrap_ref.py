"""NumPy reference of the Poisson bootstrap: the test oracle and the last fallback.

Row ``i`` enters bootstrap replicate ``b`` a Poisson(1) number of times, drawn from a hash
of ``(seed, key_i, b)`` instead of a sequential generator:

- ``row_hash_i = splitmix64(key_i ^ splitmix64(seed))`` (``rng.splitmix64``);
- ``word = splitmix64(row_hash_i + b * GAMMA)``, a uniform 64-bit word;
- ``count = #{j : word >= POISSON1_THRESHOLDS[j]}``, the inverse CDF of Poisson(1).

A count is a pure function of ``(seed, key, replicate)``: the same row gets the same
counts in any order, in any partition of the rows and on any backend, which is what lets
partial bootstrap sums merge (the distributed evaluator relies on it).

``poisson_bootstrap_sums(keys, stats, n_bootstrap, seed, n_threads)`` is the registered
backend (arguments already validated by ``bootstrap.py``; ``n_threads`` is ignored): it
forms the count matrix chunk by chunk and multiplies, so it agrees with the fused Numba
kernel to rounding, not bit for bit (the matrix product sums in another order).
"""

from __future__ import annotations

import math

import numpy as np

from nudgeserve.kernels import rng

# Rows per chunk times replicates bounds the count matrix built at once (~32 MiB).
_CHUNK_CELLS = 1 << 22


def _poisson1_thresholds() -> np.ndarray:
    """uint64 thresholds T_k = 2^64 * P(X <= k), X ~ Poisson(1), for k while the tail > 2^-64.

    A uniform 64-bit word z then maps to the count ``#{k : z >= T_k}``. Tails are summed
    directly (not 1 - cdf) so the thresholds near 2^64 keep their precision.
    """
    pmf = [math.exp(-1.0) / math.factorial(j) for j in range(40)]
    thresholds = []
    for k in range(40):
        tail = sum(pmf[k + 1 :])
        if tail * 2.0**64 < 1.0:
            break
        thresholds.append(2**64 - max(1, round(tail * 2.0**64)))
    return np.array(thresholds, dtype=np.uint64)


POISSON1_THRESHOLDS = _poisson1_thresholds()


def row_hashes(keys: np.ndarray, seed: int) -> np.ndarray:
    """uint64[n]: each row key mixed with the seed (the per-row half of the counter).

    keys: uint64[n]; seed: an int in [0, 2**64).
    """
    seed_word = rng.splitmix64(np.array([seed], dtype=np.uint64))
    return rng.splitmix64(keys ^ seed_word)


def poisson_bootstrap_counts(keys: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """float64[n_bootstrap, n]: the count of row ``i`` in replicate ``b`` (module docstring).

    keys: uint64[n]; seed: an int in [0, 2**64).
    """
    replicate = np.arange(n_bootstrap, dtype=np.uint64) * rng.GAMMA
    words = rng.splitmix64(row_hashes(keys, seed)[None, :] + replicate[:, None])
    return np.searchsorted(POISSON1_THRESHOLDS, words, side="right").astype(np.float64)


def poisson_bootstrap_sums(
    keys: np.ndarray, stats: np.ndarray, n_bootstrap: int, seed: int, n_threads: int = 1
) -> np.ndarray:
    """float64[n_bootstrap, K]: ``sum_i count[b, i] * stats[i, :]``.

    keys: uint64[n]; stats: float64[n, K] (C-contiguous); seed: an int in [0, 2**64).
    """
    out = np.zeros((n_bootstrap, stats.shape[1]), dtype=np.float64)
    if n_bootstrap == 0:
        return out
    step = max(1, _CHUNK_CELLS // n_bootstrap)
    for start in range(0, stats.shape[0], step):
        counts = poisson_bootstrap_counts(keys[start : start + step], n_bootstrap, seed)
        out += counts @ stats[start : start + step]
    return out
