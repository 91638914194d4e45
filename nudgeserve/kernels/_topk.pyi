"""Stub for the compiled masked top-k (``_topk.pyx``)."""

import numpy as np
import numpy.typing as npt

def topk(
    scores: npt.NDArray[np.float32],
    k: int,
    mask: npt.NDArray[np.bool_] | None,
    n_threads: int = 1,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Top-k per row of ``scores: float32[B, N]`` (C-contiguous), skipping NaN and masked
    entries; returns ``(indices: int64[B, k], values: float32[B, k])`` best first, ties to
    the lower index, padded with -1 / NaN."""
