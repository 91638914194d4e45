"""Numba masked top-k: the same contract as ``_topk_ref.topk`` and the same scan as
``_topk.pyx`` (see there for why it is shaped this way), written for LLVM:

- "any element of this 16-block above the threshold?" is a count of comparisons, an
  integer reduction LLVM vectorises (a float max reduction it would not, because of NaN);
- the threshold is primed by the smallest of k group maxima (each a distinct valid
  element, so a lower bound on the row's k-th best), so the first blocks, which would
  otherwise all be read again element by element while the buffer fills, are skipped.

``topk(scores, k, mask, n_threads)`` picks the serial or the row-parallel compiled kernel.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

BLOCK = 16
INSERTION_MAX_K = 48
PRIME_MAX_ELEMENTS = 4096
PRIME_MAX_K = 64
PARALLEL_MIN_ELEMENTS = 32768

_opts = {"cache": True, "nogil": True}


@njit("boolean(float32, int64, float32, int64)", inline="always", **_opts)
def _worse(va, ia, vb, ib):
    return va < vb or (va == vb and ia > ib)


@njit("void(float32[::1], int64[::1], int64, int64)", inline="always", **_opts)
def _sift_down(hv, hi, size, pos):
    v = hv[pos]
    i = hi[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(hv[child + 1], hi[child + 1], hv[child], hi[child]):
            child += 1
        if not _worse(hv[child], hi[child], v, i):
            break
        hv[pos] = hv[child]
        hi[pos] = hi[child]
        pos = child
    hv[pos] = v
    hi[pos] = i


@njit("void(float32[::1], int64[::1], int64, float32, int64)", inline="always", **_opts)
def _heap_push(hv, hi, size, v, i):
    pos = size
    while pos > 0:
        parent = (pos - 1) // 2
        if not _worse(v, i, hv[parent], hi[parent]):
            break
        hv[pos] = hv[parent]
        hi[pos] = hi[parent]
        pos = parent
    hv[pos] = v
    hi[pos] = i


@njit("float32(float32[::1], boolean[::1], boolean, int64, int64)", **_opts)
def _group_max(x, m, has_mask, start, stop):
    """Largest valid value of x[start:stop], -inf if none."""
    # Eight independent running maxima: one would wait on the previous compare at every
    # element. ``v > acc ? v : acc`` keeps acc when v is NaN (and compiles to MAXPS).
    neg = np.float32(-np.inf)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = neg
    j = start
    while j + 8 <= stop:
        v0, v1, v2, v3 = x[j], x[j + 1], x[j + 2], x[j + 3]
        v4, v5, v6, v7 = x[j + 4], x[j + 5], x[j + 6], x[j + 7]
        if has_mask:
            v0 = neg if m[j] else v0
            v1 = neg if m[j + 1] else v1
            v2 = neg if m[j + 2] else v2
            v3 = neg if m[j + 3] else v3
            v4 = neg if m[j + 4] else v4
            v5 = neg if m[j + 5] else v5
            v6 = neg if m[j + 6] else v6
            v7 = neg if m[j + 7] else v7
        a0 = v0 if v0 > a0 else a0
        a1 = v1 if v1 > a1 else a1
        a2 = v2 if v2 > a2 else a2
        a3 = v3 if v3 > a3 else a3
        a4 = v4 if v4 > a4 else a4
        a5 = v5 if v5 > a5 else a5
        a6 = v6 if v6 > a6 else a6
        a7 = v7 if v7 > a7 else a7
        j += 8
    while j < stop:
        v0 = x[j]
        if v0 > a0 and not (has_mask and m[j]):
            a0 = v0
        j += 1
    a0 = max(a0, a1)
    a2 = max(a2, a3)
    a4 = max(a4, a5)
    a6 = max(a6, a7)
    return max(max(a0, a2), max(a4, a6))


@njit("void(float32[::1], boolean[::1], boolean, int64, float32[::1], int64[::1])", **_opts)
def _topk_row(x, m, has_mask, k, bv, bi):
    # One function on purpose: a call that passes arrays costs reference counting, far
    # more than the one comparison most elements need.
    n = x.shape[0]
    use_heap = k > INSERTION_MAX_K
    n_blocks = n // BLOCK
    floor_value = np.float32(-np.inf)
    n_prime = min(n, PRIME_MAX_ELEMENTS)
    if k <= PRIME_MAX_K and n_prime >= k:
        floor_value = np.float32(np.inf)
        for g in range(k):
            start = g * n_prime // k
            stop = (g + 1) * n_prime // k
            best = _group_max(x, m, has_mask, start, stop)
            if best < floor_value:
                floor_value = best
    count = 0
    thr = np.float32(np.inf)
    for b in range(n_blocks + 1):
        start = b * BLOCK
        stop = min(start + BLOCK, n)
        if b < n_blocks:
            hits = 0
            if count < k:
                for t in range(BLOCK):
                    hits += x[start + t] >= floor_value
            else:
                for t in range(BLOCK):
                    hits += x[start + t] > thr
            if hits == 0:
                continue
        for j in range(start, stop):
            v = x[j]
            if count == k:
                if v > thr and not (has_mask and m[j]):
                    if use_heap:
                        bv[0] = v
                        bi[0] = j
                        _sift_down(bv, bi, k, 0)
                        thr = bv[0]
                    else:
                        # Insert behind equal scores: j comes after every kept index.
                        pos = k - 1
                        while pos > 0 and bv[pos - 1] < v:
                            bv[pos] = bv[pos - 1]
                            bi[pos] = bi[pos - 1]
                            pos -= 1
                        bv[pos] = v
                        bi[pos] = j
                        thr = bv[k - 1]
            # NaN fails ``>=`` so it never enters.
            elif v >= floor_value and not (has_mask and m[j]):
                if use_heap:
                    _heap_push(bv, bi, count, v, j)
                else:
                    pos = count
                    while pos > 0 and bv[pos - 1] < v:
                        bv[pos] = bv[pos - 1]
                        bi[pos] = bi[pos - 1]
                        pos -= 1
                    bv[pos] = v
                    bi[pos] = j
                count += 1
                if count == k:
                    thr = bv[0] if use_heap else bv[k - 1]
    if use_heap:
        # Heap-sort: move the worst (the root) to the end until the buffer is best-first.
        for end in range(count - 1, 0, -1):
            v = bv[end]
            i = bi[end]
            bv[end] = bv[0]
            bi[end] = bi[0]
            bv[0] = v
            bi[0] = i
            _sift_down(bv, bi, end, 0)
    for t in range(count, k):
        bv[t] = np.nan
        bi[t] = -1


_ROWS_SIG = "void(float32[:, ::1], int64, boolean[:, ::1], boolean, int64[:, ::1], float32[:, ::1])"


@njit(_ROWS_SIG, **_opts)
def _topk_rows(scores, k, mask, has_mask, indices, values):
    for r in range(scores.shape[0]):
        _topk_row(scores[r], mask[r], has_mask, k, values[r], indices[r])


@njit(_ROWS_SIG, parallel=True, **_opts)
def _topk_rows_parallel(scores, k, mask, has_mask, indices, values):
    for r in prange(scores.shape[0]):
        _topk_row(scores[r], mask[r], has_mask, k, values[r], indices[r])


def topk(
    scores: np.ndarray, k: int, mask: np.ndarray | None, n_threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k per row; see ``_topk_ref.topk`` for the contract.

    scores: float32[B, N] C-contiguous; mask: bool[B, N] C-contiguous or None.
    Returns (indices: int64[B, k], values: float32[B, k]).
    """
    n_rows, n_cols = scores.shape
    indices = np.empty((n_rows, k), dtype=np.int64)
    values = np.empty((n_rows, k), dtype=np.float32)
    if n_rows == 0 or k == 0:
        return indices, values
    has_mask = mask is not None
    # The compiled kernels always take a mask; "none" is a [B, 0] array never read.
    mask_arg = mask if has_mask else np.empty((n_rows, 0), dtype=np.bool_)
    if n_threads > 1 and n_rows > 1 and n_rows * n_cols >= PARALLEL_MIN_ELEMENTS:
        threads = min(n_threads, numba.config.NUMBA_NUM_THREADS)
        # Numba's thread count is per calling thread; a server thread may not have set it.
        if numba.get_num_threads() != threads:
            numba.set_num_threads(threads)
        _topk_rows_parallel(scores, k, mask_arg, has_mask, indices, values)
    else:
        _topk_rows(scores, k, mask_arg, has_mask, indices, values)
    return indices, values
