"""Numba exploration samplers: the contracts of ``_sampling_ref`` (read there for the
semantics), compiled, one row per loop iteration, rows in parallel for large batches.

The counter-based generator (``rng``) is repeated here with the same integer operations
and its constants, so every uniform is bit-identical to the NumPy one; which item is chosen can then differ
from the reference only if a uniform lands within a rounding error of a boundary between
two items (``exp``/``log`` here are libm's, NumPy's may differ in the last bit).

Plackett-Luce computes each row's weights once, relative to the running maximum, and
recomputes them only when the largest remaining score falls ``PL_RESCALE_GAP`` below it
(the reference recomputes them every slot).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from nudgeserve.kernels import _sampling_ref as ref
from nudgeserve.kernels import rng
from nudgeserve.kernels._topk_numba import _topk_row

PARALLEL_MIN_ELEMENTS = 32768

_opts = {"cache": True, "nogil": True}

# Module globals are compile-time constants to numba.
_GAMMA = rng.GAMMA
_MIX1 = rng.MIX1
_MIX2 = rng.MIX2
_ONE = np.uint64(1)
_BLOCK = np.uint64(ref.GAMMA_BLOCK)
_BOOST = np.uint64(ref.BOOST_COUNTER)
_MAX_ATTEMPTS = ref.MAX_ATTEMPTS
_UNIT = rng.UNIT
_GAP = ref.PL_RESCALE_GAP


@njit("uint64(uint64)", **_opts)
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit("float64(uint64, uint64)", **_opts)
def _uniform(key, counter):
    z = _mix64(key + (counter + _ONE) * _GAMMA)
    return (np.float64(z >> np.uint64(12)) + 0.5) * _UNIT


@njit("uint64(uint64)", **_opts)
def _row_key(seed):
    return _mix64(seed + _GAMMA)


@njit("UniTuple(float64, 2)(uint64, uint64, float64)", **_opts)
def _gamma(key, block, shape):
    """``(g, log_boost)`` of ``_sampling_ref.gamma_draws`` for one draw."""
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    base = block * _BLOCK
    g = d
    for t in range(_MAX_ATTEMPTS):
        t3 = np.uint64(3 * t)
        u1 = _uniform(key, base + t3)
        u2 = _uniform(key, base + t3 + _ONE)
        x = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
        v = 1.0 + c * x
        if v <= 0.0:
            continue
        v = v * v * v
        u3 = _uniform(key, base + t3 + np.uint64(2))
        if u3 < 1.0 - 0.0331 * (x * x) * (x * x) or (
            math.log(u3) < 0.5 * x * x + d - d * v + d * math.log(v)
        ):
            g = d * v
            break
    log_boost = 0.0
    if boost:
        log_boost = math.log(_uniform(key, base + _BOOST)) / shape
    return g, log_boost


@njit("float64(uint64, uint64, float64, float64)", **_opts)
def _thompson_delta(key, arm_block, alpha, beta):
    gx, bx = _gamma(key, arm_block, alpha)
    gy, by = _gamma(key, arm_block + _ONE, beta)
    delta = math.log(gx / gy) + (bx - by)
    return 0.0 if delta != delta else delta


# ---------------------------------------------------------------- epsilon-greedy


@njit(
    "void(float32[:, ::1], int64, float64, uint64[::1], boolean[:, ::1], boolean, int64, "
    "int64[:, ::1], float64[:, ::1], float32[:, ::1], int64[:, ::1])",
    **_opts,
)
def _eps_row(scores, k, epsilon, seeds, mask, has_mask, r, indices, props, buf, pool):
    x = scores[r]
    m = mask[r]
    n = x.shape[0]
    out = indices[r]
    _topk_row(x, m, has_mask, k, buf[r], out)
    n_valid = 0
    for j in range(n):
        if x[j] == x[j] and not (has_mask and m[j]):
            n_valid += 1
    key = _row_key(seeds[r])
    take = min(k, n_valid)
    p = props[r]
    if take == 0:
        for s in range(k):
            p[s] = np.nan
        return
    uniform = epsilon / n_valid
    if _uniform(key, np.uint64(0)) < epsilon:
        # Partial Fisher-Yates over the valid indices in ascending order.
        pl = pool[r]
        c = 0
        for j in range(n):
            if x[j] == x[j] and not (has_mask and m[j]):
                pl[c] = j
                c += 1
        for s in range(take):
            remaining = n_valid - s
            u = _uniform(key, np.uint64(1 + s))
            offset = min(math.floor(u * remaining), remaining - 1)
            j = s + np.int64(offset)
            tmp = pl[s]
            pl[s] = pl[j]
            pl[j] = tmp
            greedy_here = 1.0 if pl[s] == out[s] else 0.0
            out[s] = pl[s]
            p[s] = (1.0 - epsilon) * greedy_here + uniform
    else:
        for s in range(take):
            p[s] = (1.0 - epsilon) * 1.0 + uniform
    for s in range(take, k):
        p[s] = np.nan


_EPS_SIG = (
    "void(float32[:, ::1], int64, float64, uint64[::1], boolean[:, ::1], boolean, "
    "int64[:, ::1], float64[:, ::1], float32[:, ::1], int64[:, ::1])"
)


@njit(_EPS_SIG, **_opts)
def _eps_rows(scores, k, epsilon, seeds, mask, has_mask, indices, props, buf, pool):
    for r in range(scores.shape[0]):
        _eps_row(scores, k, epsilon, seeds, mask, has_mask, r, indices, props, buf, pool)


@njit(_EPS_SIG, parallel=True, **_opts)
def _eps_rows_parallel(scores, k, epsilon, seeds, mask, has_mask, indices, props, buf, pool):
    for r in prange(scores.shape[0]):
        _eps_row(scores, k, epsilon, seeds, mask, has_mask, r, indices, props, buf, pool)


# ---------------------------------------------------------------- Plackett-Luce


@njit("float64(float64, float64)", **_opts)
def _pl_weight(z, m):
    if math.isinf(m):
        return 1.0 if z == m else 0.0
    return math.exp(z - m)


@njit(
    "void(float32[:, ::1], int64, float64, uint64[::1], boolean[:, ::1], boolean, int64, "
    "int64[:, ::1], float64[:, ::1], float64[:, ::1], float64[:, ::1])",
    **_opts,
)
def _pl_row(scores, k, temperature, seeds, mask, has_mask, r, indices, props, zs, weights):
    x = scores[r]
    m = mask[r]
    n = x.shape[0]
    out = indices[r]
    p = props[r]
    z = zs[r]
    w = weights[r]  # weight of each available item; -1 once taken or when invalid
    key = _row_key(seeds[r])
    top = -np.inf
    available = 0
    for j in range(n):
        if x[j] == x[j] and not (has_mask and m[j]):
            z[j] = np.float64(x[j]) / temperature
            available += 1
            if z[j] > top or available == 1:
                top = z[j]
            w[j] = 0.0
        else:
            w[j] = -1.0
    highest = top  # the largest z still available; top is the base of the weights
    for j in range(n):
        if w[j] >= 0.0:
            w[j] = _pl_weight(z[j], top)
    s = 0
    while s < k and available > 0:
        total = 0.0
        for j in range(n):
            if w[j] >= 0.0:
                total += w[j]
        target = _uniform(key, np.uint64(s)) * total
        cum = 0.0
        pick = -1
        last_positive = -1
        for j in range(n):
            if w[j] > 0.0:
                cum += w[j]
                last_positive = j
                if cum > target:
                    pick = j
                    break
        if pick < 0:
            pick = last_positive
        out[s] = pick
        p[s] = w[pick] / total
        w[pick] = -1.0
        available -= 1
        s += 1
        if z[pick] == highest and available > 0:
            # The maximum may have left: find the new one, and recompute the weights if
            # it is infinite or so far below their base that the rest would underflow.
            first = True
            for j in range(n):
                if w[j] >= 0.0 and (first or z[j] > highest):
                    highest = z[j]
                    first = False
            if highest != top and (math.isinf(top) or math.isinf(highest) or highest < top - _GAP):
                top = highest
                for j in range(n):
                    if w[j] >= 0.0:
                        w[j] = _pl_weight(z[j], top)
    while s < k:
        out[s] = -1
        p[s] = np.nan
        s += 1


_PL_SIG = (
    "void(float32[:, ::1], int64, float64, uint64[::1], boolean[:, ::1], boolean, "
    "int64[:, ::1], float64[:, ::1], float64[:, ::1], float64[:, ::1])"
)


@njit(_PL_SIG, **_opts)
def _pl_rows(scores, k, temperature, seeds, mask, has_mask, indices, props, zs, weights):
    for r in range(scores.shape[0]):
        _pl_row(scores, k, temperature, seeds, mask, has_mask, r, indices, props, zs, weights)


@njit(_PL_SIG, parallel=True, **_opts)
def _pl_rows_parallel(scores, k, temperature, seeds, mask, has_mask, indices, props, zs, weights):
    for r in prange(scores.shape[0]):
        _pl_row(scores, k, temperature, seeds, mask, has_mask, r, indices, props, zs, weights)


# ---------------------------------------------------------------- Thompson sampling


@njit("int64(float64[::1], boolean[::1], boolean, int64, float64[::1], int64[::1])", **_opts)
def _rank_row(delta, excluded, use_excluded, k, bv, bi):
    """Top-k of delta, skipping excluded (ties to the lower index) into bi; returns count."""
    count = 0
    for j in range(delta.shape[0]):
        if use_excluded and excluded[j]:
            continue
        v = delta[j]
        if count == k:
            if not v > bv[k - 1]:
                continue
            pos = k - 1
        else:
            pos = count
            count += 1
        while pos > 0 and bv[pos - 1] < v:
            bv[pos] = bv[pos - 1]
            bi[pos] = bi[pos - 1]
            pos -= 1
        bv[pos] = v
        bi[pos] = j
    for s in range(count, k):
        bi[s] = -1
    return count


_TS_SIG = (
    "void(float64[:, ::1], float64[:, ::1], int64, uint64[::1], boolean[:, ::1], "
    "boolean, int64[:, ::1], float64[:, ::1], float64[:, ::1])"
)


@njit(
    "void(float64[:, ::1], float64[:, ::1], int64, uint64[::1], boolean[:, ::1], boolean, "
    "int64, int64[:, ::1], float64[:, ::1], float64[:, ::1])",
    **_opts,
)
def _thompson_row(alpha, beta, k, seeds, mask, has_mask, r, indices, deltas, buf):
    shared = alpha.shape[0] == 1
    a = alpha[0] if shared else alpha[r]
    b = beta[0] if shared else beta[r]
    m = mask[r]
    d = deltas[r]
    key = _row_key(seeds[r])
    for i in range(a.shape[0]):
        if not (has_mask and m[i]):
            d[i] = _thompson_delta(key, np.uint64(2 * i), a[i], b[i])
    _rank_row(d, m, has_mask, k, buf[r], indices[r])


@njit(_TS_SIG, **_opts)
def _thompson_rows(alpha, beta, k, seeds, mask, has_mask, indices, deltas, buf):
    for r in range(seeds.shape[0]):
        _thompson_row(alpha, beta, k, seeds, mask, has_mask, r, indices, deltas, buf)


@njit(_TS_SIG, parallel=True, **_opts)
def _thompson_rows_parallel(alpha, beta, k, seeds, mask, has_mask, indices, deltas, buf):
    for r in prange(seeds.shape[0]):
        _thompson_row(alpha, beta, k, seeds, mask, has_mask, r, indices, deltas, buf)


# ---------------------------------------------------------------- entry points


def _parallel(n_threads: int, n_rows: int, n_cols: int) -> bool:
    if n_threads <= 1 or n_rows <= 1 or n_rows * n_cols < PARALLEL_MIN_ELEMENTS:
        return False
    threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
    # Numba's thread count is per calling thread; a server thread may not have set it.
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return True


def _mask_arg(mask: np.ndarray | None, n_rows: int) -> tuple[np.ndarray, bool]:
    # The compiled kernels always take a mask; "none" is a [B, 0] array never read.
    if mask is None:
        return np.empty((n_rows, 0), dtype=np.bool_), False
    return mask, True


def epsilon_greedy_slate(
    scores: np.ndarray,
    k: int,
    epsilon: float,
    seeds: np.ndarray,
    mask: np.ndarray | None,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """See ``_sampling_ref.epsilon_greedy_slate``."""
    n_rows, n_cols = scores.shape
    indices = np.empty((n_rows, k), dtype=np.int64)
    props = np.empty((n_rows, k), dtype=np.float64)
    if n_rows == 0 or k == 0:
        return indices, props
    mask_arg, has_mask = _mask_arg(mask, n_rows)
    buf = np.empty((n_rows, k), dtype=np.float32)
    pool = np.empty((n_rows, n_cols), dtype=np.int64)
    kernel = _eps_rows_parallel if _parallel(n_threads, n_rows, n_cols) else _eps_rows
    kernel(scores, k, float(epsilon), seeds, mask_arg, has_mask, indices, props, buf, pool)
    return indices, props


def plackett_luce_slate(
    scores: np.ndarray,
    k: int,
    temperature: float,
    seeds: np.ndarray,
    mask: np.ndarray | None,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """See ``_sampling_ref.plackett_luce_slate``."""
    n_rows, n_cols = scores.shape
    indices = np.empty((n_rows, k), dtype=np.int64)
    props = np.empty((n_rows, k), dtype=np.float64)
    if n_rows == 0 or k == 0:
        return indices, props
    mask_arg, has_mask = _mask_arg(mask, n_rows)
    zs = np.empty((n_rows, n_cols), dtype=np.float64)
    weights = np.empty((n_rows, n_cols), dtype=np.float64)
    kernel = _pl_rows_parallel if _parallel(n_threads, n_rows, n_cols) else _pl_rows
    kernel(scores, k, float(temperature), seeds, mask_arg, has_mask, indices, props, zs, weights)
    return indices, props


def thompson_draw(
    alpha: np.ndarray,
    beta: np.ndarray,
    k: int,
    seeds: np.ndarray,
    mask: np.ndarray | None,
    n_threads: int = 1,
) -> np.ndarray:
    """See ``_sampling_ref.thompson_draw``."""
    n_rows = seeds.shape[0]
    n_cols = alpha.shape[1]
    indices = np.empty((n_rows, k), dtype=np.int64)
    if n_rows == 0 or k == 0:
        return indices
    mask_arg, has_mask = _mask_arg(mask, n_rows)
    deltas = np.empty((n_rows, n_cols), dtype=np.float64)
    buf = np.empty((n_rows, k), dtype=np.float64)
    # Each arm costs two Gamma draws (tens of nanoseconds), so fewer rows pay for threads.
    parallel = _parallel(n_threads, n_rows, 64 * n_cols)
    kernel = _thompson_rows_parallel if parallel else _thompson_rows
    kernel(alpha, beta, k, seeds, mask_arg, has_mask, indices, deltas, buf)
    return indices
