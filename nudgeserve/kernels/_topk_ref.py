"""NumPy reference for masked top-k: the test oracle and the last fallback.

``topk(scores, k, mask, n_threads)`` is one backend of the ``"topk"`` op and takes the
arguments that ``topk.py`` has already validated: ``scores: float32[B, N]`` C-contiguous,
``k`` an int ``>= 0``, ``mask: bool[B, N]`` C-contiguous or None (True = excluded),
``n_threads`` accepted for a uniform signature and ignored here.

Returns ``(indices: int64[B, k], values: float32[B, k])``: per row the valid candidates
(not masked, not NaN) sorted by score descending, ties broken by the lower index, padded
with index ``-1`` and value ``NaN`` when a row has fewer than ``k`` valid candidates.

It sorts every row completely (a stable argsort of the negated scores, invalid entries
set to NaN so they sort last), which is slow but obviously right.
"""

from __future__ import annotations

import numpy as np

PAD_INDEX = -1
PAD_VALUE = np.float32(np.nan)


def topk(
    scores: np.ndarray, k: int, mask: np.ndarray | None, n_threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    n_rows, n_cols = scores.shape
    indices = np.full((n_rows, k), PAD_INDEX, dtype=np.int64)
    values = np.full((n_rows, k), PAD_VALUE, dtype=np.float32)
    if n_rows == 0 or k == 0 or n_cols == 0:
        return indices, values
    valid = ~np.isnan(scores)
    if mask is not None:
        valid &= ~mask
    # Negating maps -inf (a valid lowest score) to +inf, which sorts before the NaNs that
    # stand for invalid entries; the stable sort keeps lower indices first among ties
    # (-0.0 and 0.0 compare equal, so they tie too).
    key = np.where(valid, -scores, np.float32(np.nan))
    take = min(k, n_cols)
    order = np.argsort(key, axis=1, kind="stable")[:, :take]
    n_valid = valid.sum(axis=1)
    filled = np.arange(take)[None, :] < n_valid[:, None]
    indices[:, :take] = np.where(filled, order, PAD_INDEX)
    picked = np.take_along_axis(scores, order, axis=1)
    values[:, :take] = np.where(filled, picked, PAD_VALUE)
    return indices, values
