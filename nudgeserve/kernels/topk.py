"""Masked top-k over a batch of score rows: one call per batch, GIL released.

Backends (chosen once per process, see ``_backend``): ``cython`` (``_topk.pyx``),
``numba`` (``_topk_numba``), ``numpy`` (``_topk_ref``, the oracle). All return identical
arrays.
"""

from __future__ import annotations

import numbers

import numpy as np

from nudgeserve.kernels._backend import REGISTRY
from nudgeserve.kernels._threads import get_num_threads

__all__ = ["topk"]


def check_scores(scores: object, name: str = "scores") -> np.ndarray:
    """``scores`` as a C-contiguous ``float32[B, N]`` (copied only if not contiguous).

    Any other dtype is a TypeError rather than a silent cast: the serving path produces
    float32, and a float64 array here means a copy per call that nobody asked for.
    """
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(scores).__name__}")
    if scores.dtype != np.float32:
        raise TypeError(
            f"{name} must have dtype float32, got {scores.dtype} "
            f"(convert with {name}.astype(np.float32))"
        )
    if scores.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D [batch, candidates], got shape {scores.shape} "
            f"(one row: {name}[None, :])"
        )
    return np.ascontiguousarray(scores)


def check_k(k: object) -> int:
    """``k`` as a non-negative int."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(k)


def check_mask(mask: object, shape: tuple[int, ...], name: str = "mask") -> np.ndarray | None:
    """``mask`` as None or a C-contiguous ``bool`` array of exactly ``shape``."""
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray):
        raise TypeError(
            f"{name} must be None or a numpy.ndarray of bool, got {type(mask).__name__}"
        )
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must have dtype bool (True = excluded), got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(f"{name} must have the shape of the scores {shape}, got {mask.shape}")
    return np.ascontiguousarray(mask)


def topk(
    scores: np.ndarray, k: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k best candidates of every row.

    Args:
        scores: float32[B, N]. NaN scores are treated as excluded (never returned);
            ``-inf`` is a valid, lowest score; ``+inf`` a valid, highest one. Other
            dtypes raise TypeError (no silent conversion). Non-contiguous arrays are
            copied once.
        k: candidates per row, ``>= 0``; ``k > N`` is fine (padding).
        mask: bool[B, N] or None; True excludes the candidate.

    Returns:
        ``(indices, values)``: ``indices: int64[B, k]`` sorted by score descending, ties
        broken by the lower index (``-0.0`` ties with ``0.0``), and
        ``values: float32[B, k]``, the scores at those indices. A row with fewer than k
        valid candidates is padded with index ``-1`` and value ``NaN`` (NaN is never a
        returned score, so padding is unambiguous in both arrays). ``k == 0`` or
        ``B == 0`` give empty arrays of shape ``[B, k]``.

    Unlike ``torch.topk`` (which ranks NaN highest), NaN is excluded here; otherwise the
    order equals a stable descending sort of each row.
    """
    scores = check_scores(scores)
    k = check_k(k)
    mask = check_mask(mask, scores.shape)
    return REGISTRY.get("topk")(scores, k, mask, get_num_threads())


def _load_cython():
    from nudgeserve.kernels._topk import topk as impl

    return impl


def _load_numba():
    from nudgeserve.kernels._topk_numba import topk as impl

    return impl


def _load_numpy():
    from nudgeserve.kernels._topk_ref import topk as impl

    return impl


def _example(size: str) -> tuple[tuple, dict]:
    rng = np.random.default_rng(0)
    # "batch": one server batch (64 requests x 80 candidates); "typical" = "large".
    rows, cols, k = {"small": (4, 40, 3), "batch": (64, 80, 3)}.get(size, (4096, 80, 3))
    scores = rng.standard_normal((rows, cols)).astype(np.float32)
    mask = rng.random((rows, cols)) < 0.1
    return (scores, k, mask, get_num_threads()), {}


REGISTRY.register(
    "topk",
    {"cython": _load_cython, "numba": _load_numba, "numpy": _load_numpy},
    example=_example,
)
