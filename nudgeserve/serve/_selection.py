"""Choosing the shown actions from a batch of score rows with the compiled kernels.

Rows of one batch may follow different policies (experiment variants) and ask for
different ``k``: rows are grouped by policy, each group is one kernel call with the
largest ``k`` of the batch, and each row keeps its first ``k`` slots. That is exact for
every policy here because each fills slots in order, slot ``s`` depending only on the
slots above it (greedy top-k, epsilon-greedy, Plackett-Luce sampling without
replacement), so the first ``k`` of a longer slate are distributed as a ``k`` slate.
"""

from __future__ import annotations

import numpy as np

from nudgeserve.kernels import epsilon_greedy_slate, plackett_luce_slate, topk

from .config import EpsilonGreedy, Greedy, PlackettLuce, Policy


def select_slates(
    scores: np.ndarray,
    k: int,
    policies: list[Policy],
    seeds: np.ndarray,
    excluded: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``k`` actions per row.

    scores: float32[B, N]; policies: one per row; seeds: uint64[B] (one random stream per
    row, so a decision is reproducible from its seed); excluded: bool[B, N] (True = may not
    be shown) or None.
    Returns (idx int64[B, k], propensity float64[B, k]); ``-1`` / ``0`` pad rows with fewer
    than ``k`` allowed actions. Greedy propensities are 1.
    """
    n_rows = scores.shape[0]
    idx = np.full((n_rows, k), -1, dtype=np.int64)
    prop = np.zeros((n_rows, k), dtype=np.float64)
    groups: dict[Policy, list[int]] = {}
    for row, policy in enumerate(policies):
        groups.setdefault(policy, []).append(row)
    for policy, rows in groups.items():
        if len(rows) == n_rows:
            sub_scores, sub_seeds, sub_mask = scores, seeds, excluded
        else:
            take = np.asarray(rows, dtype=np.intp)
            sub_scores, sub_seeds = scores[take], seeds[take]
            sub_mask = excluded[take] if excluded is not None else None
        got_idx, got_prop = _select(sub_scores, k, policy, sub_seeds, sub_mask)
        idx[rows] = got_idx
        prop[rows] = got_prop
    return idx, prop


def _select(
    scores: np.ndarray,
    k: int,
    policy: Policy,
    seeds: np.ndarray,
    excluded: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(policy, Greedy):
        idx, _ = topk(scores, k, mask=excluded)
        return idx, (idx >= 0).astype(np.float64)
    if isinstance(policy, EpsilonGreedy):
        return epsilon_greedy_slate(scores, k, policy.epsilon, seeds, mask=excluded)
    if isinstance(policy, PlackettLuce):
        return plackett_luce_slate(scores, k, policy.temperature, seeds, mask=excluded)
    raise TypeError(f"policy must be Greedy, EpsilonGreedy or PlackettLuce, got {policy!r}")
