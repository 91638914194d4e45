"""Choosing the shown actions from a batch of score rows with the compiled kernels.

Rows of one batch may follow different policies (experiment variants) and ask for
different ``k``: rows are grouped by policy, each group is one kernel call with the
largest ``k`` of the batch, and each row keeps its first ``k`` slots. That is exact for
every policy here because each fills slots in order, slot ``s`` depending only on the
slots above it (greedy top-k, epsilon-greedy, Plackett-Luce and Thompson sampling
without replacement), so the first ``k`` of a longer slate are distributed as a ``k``
slate.

Propensities: every policy returns, per slot, the **slot marginal** P(this action at
this slot) under the policy, the quantity per-position off-policy estimators read
(``nudgeserve.models.evaluation.ope``) and the decision log records:

- greedy, control, LinUCB without exploration: 1 (deterministic);
- epsilon-greedy (and LinUCB with its epsilon): the kernel's exact marginal
  ``(1 - epsilon) [greedy puts it there] + epsilon / n_valid``;
- Plackett-Luce: the kernel returns the probability *conditional* on the slots above;
  ``plackett_luce_marginals`` turns it into the exact marginal (slots 0..2; the config
  caps such use cases at ``max_k`` 3);
- Thompson sampling per arm: the kernel's marginal (deterministic quadrature);
- linear Thompson sampling: a Monte Carlo estimate (no closed form exists; see
  ``nudgeserve.models.policies.linear_bandit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nudgeserve.kernels import (
    epsilon_greedy_slate,
    plackett_luce_slate,
    thompson_bernoulli_slate,
    topk,
)
from nudgeserve.serve.config import (
    MAX_PLACKETT_LUCE_K,
    Control,
    EpsilonGreedy,
    Greedy,
    LinearBandit,
    PlackettLuce,
    Policy,
    Thompson,
)


@dataclass(frozen=True)
class SelectionState:
    """What policies other than the score-based ones need, for one batch.

    control_index: the control action's column (``control``), or None.
    n_catalog: catalog columns come first; later columns are inline candidates.
    arm_counts: ``key -> (successes, failures)``, float64[n_catalog] per-arm reward
        counts from the learner for a bandit key (``thompson``), or None: no counts yet.
    linear: ``key -> LinearBandit`` the learner's linear bandit for a key (``linear``),
        or None when the use case has none.
    linear_features: ``rows -> float64[len(rows), N, d]`` the bandit's features for
        those batch rows (``linear``), or None when the use case has none.
    """

    control_index: int | None = None
    n_catalog: int = 0
    arm_counts: Any = None
    linear: Any = None
    linear_features: Any = None


def select_slates(
    scores: np.ndarray,
    ks: list[int],
    policies: list[Policy],
    seeds: np.ndarray,
    excluded: np.ndarray | None,
    state: SelectionState | None = None,
    keys: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``ks[r]`` actions for row r.

    scores: float32[B, N]; ks: slate size per row; policies: one per row; seeds:
    uint64[B] (one random stream per row, so a decision is reproducible from its seed);
    excluded: bool[B, N] (True = may not be shown) or None; state: see
    ``SelectionState``; keys: each row's bandit key (the learner's ``policy_key``: an
    experiment arm learns from its own traffic only), None = ``""`` for every row.
    Returns (idx int64[B, K], propensity float64[B, K]) with K = max(ks): the slot
    marginals (module docstring); ``-1`` / ``0`` pad slots beyond a row's k or its
    allowed actions.
    """
    state = state or SelectionState(n_catalog=scores.shape[1])
    n_rows = scores.shape[0]
    k_max = max(ks)
    idx = np.full((n_rows, k_max), -1, dtype=np.int64)
    prop = np.zeros((n_rows, k_max), dtype=np.float64)
    groups: dict[tuple[Policy, str], list[int]] = {}
    for row, policy in enumerate(policies):
        # Bandit policies learn per key; the others ignore it (one kernel call per policy).
        key = keys[row] if keys is not None and isinstance(policy, Thompson | LinearBandit) else ""
        groups.setdefault((policy, key), []).append(row)
    for (policy, key), rows in groups.items():
        take = np.asarray(rows, dtype=np.intp)
        # The group's own largest k: a policy whose cost or exactness depends on k (the
        # Plackett-Luce marginals) never sees another group's.
        k = max(ks[r] for r in rows)
        if len(rows) == n_rows:
            sub_scores, sub_seeds, sub_mask = scores, seeds, excluded
        else:
            sub_scores, sub_seeds = scores[take], seeds[take]
            sub_mask = excluded[take] if excluded is not None else None
        got_idx, got_prop = _select(sub_scores, k, policy, sub_seeds, sub_mask, state, take, key)
        idx[take, :k] = got_idx
        prop[take, :k] = np.nan_to_num(got_prop, nan=0.0)
    return idx, prop


def _select(
    scores: np.ndarray,
    k: int,
    policy: Policy,
    seeds: np.ndarray,
    excluded: np.ndarray | None,
    state: SelectionState,
    rows: np.ndarray,
    key: str,
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(policy, Greedy):
        idx, _ = topk(scores, k, mask=excluded)
        return idx, (idx >= 0).astype(np.float64)
    if isinstance(policy, EpsilonGreedy):
        return epsilon_greedy_slate(scores, k, policy.epsilon, seeds, mask=excluded)
    if isinstance(policy, PlackettLuce):
        idx, _ = plackett_luce_slate(scores, k, policy.temperature, seeds, mask=excluded)
        return idx, plackett_luce_marginals(scores, policy.temperature, idx, excluded)
    if isinstance(policy, Control):
        if state.control_index is None:
            raise ValueError("policy control needs a use case with a control action")
        forced = scores.astype(np.float32, copy=True)
        forced[:, state.control_index] = np.inf
        idx, _ = topk(forced, k, mask=excluded)
        return idx, (idx >= 0).astype(np.float64)
    if isinstance(policy, Thompson):
        return _thompson(scores.shape, k, policy, seeds, excluded, state, key)
    if isinstance(policy, LinearBandit):
        return _linear(k, policy, seeds, excluded, state, rows, key)
    raise TypeError(f"policy must be one of the configured policy kinds, got {policy!r}")


def _thompson(shape, k, policy: Thompson, seeds, excluded, state: SelectionState, key: str):
    n_cols = shape[1]
    alpha = np.full(n_cols, policy.prior_alpha, dtype=np.float64)
    beta = np.full(n_cols, policy.prior_beta, dtype=np.float64)
    counts = state.arm_counts(key) if state.arm_counts is not None else None
    if counts is not None and len(counts[0]):
        n = state.n_catalog
        alpha[:n] += counts[0][:n]
        beta[:n] += counts[1][:n]
    return thompson_bernoulli_slate(alpha, beta, k, seeds, mask=excluded)


def _linear(k, policy: LinearBandit, seeds, excluded, state: SelectionState, rows, key: str):
    bandit = state.linear(key) if state.linear is not None else None
    if bandit is None or state.linear_features is None:
        raise ValueError("policy linear needs the learner's linear bandit and the model's features")
    x = state.linear_features(rows)
    if policy.method == "ucb":
        return bandit.linucb_slate(
            x, k, alpha=policy.alpha, epsilon=policy.epsilon, seeds=seeds, mask=excluded
        )
    return bandit.thompson_slate(
        x,
        k,
        seeds=seeds,
        scale=policy.alpha,
        mask=excluded,
        propensity_draws=policy.propensity_draws,
    )


def plackett_luce_marginals(
    scores: np.ndarray, temperature: float, chosen: np.ndarray, excluded: np.ndarray | None
) -> np.ndarray:
    """Exact P(chosen[r, s] at slot s) of a Plackett-Luce slate, for slots s < 3.

    scores: float32[B, N] (NaN = excluded, as the kernel reads them); temperature > 0;
    chosen: int64[B, k] (k <= 3, -1 = padding); excluded: bool[B, N] or None.
    Returns float64[B, k] (NaN for padding).

    With unnormalized weights ``e = exp((score - max) / T)`` over the valid candidates
    and ``S = sum e``: P(a at 0) = e_a / S; P(a at 1) = sum_{b != a} e_b/S * e_a/(S - e_b);
    P(a at 2) = sum over ordered pairs (b, c) without a of e_b/S * e_c/(S - e_b) *
    e_a/(S - e_b - e_c). ``S - e_b`` and ``S - e_b - e_c`` are formed from sums of the
    *other* weights (tail sums of the sorted weights), so a dominant item does not cancel
    them to rounding noise at low temperatures.
    """
    n_rows, k = chosen.shape
    if k > MAX_PLACKETT_LUCE_K:
        raise ValueError(
            f"exact Plackett-Luce slot marginals need k <= {MAX_PLACKETT_LUCE_K}, got {k}"
        )
    out = np.full((n_rows, k), np.nan)
    if n_rows == 0 or k == 0:
        return out
    s = np.asarray(scores, dtype=np.float64)
    valid = ~np.isnan(s)
    if excluded is not None:
        valid &= ~excluded
    z = np.where(valid, s / temperature, -np.inf)
    top = z.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        shifted = z - top
    # The softmax's limits, as the kernel takes them: +inf scores share all the mass; a
    # row whose valid scores are all -inf is uniform over them.
    shifted = np.where(np.isposinf(top), np.where(np.isposinf(z), 0.0, -np.inf), shifted)
    shifted = np.where(np.isneginf(top), np.where(valid, 0.0, -np.inf), shifted)
    e = np.exp(shifted)
    e[~valid] = 0.0
    order = np.argsort(-e, axis=1, kind="stable")
    sorted_e = np.take_along_axis(e, order, axis=1)
    # tail[j] = sum of the sorted weights after position j (smallest first: accurate)
    tail = np.cumsum(sorted_e[:, ::-1], axis=1)[:, ::-1]
    total = tail[:, 0]
    rest1 = tail[:, 1] if e.shape[1] > 1 else np.zeros(n_rows)  # S - e_top1, exactly
    rest2 = tail[:, 2] if e.shape[1] > 2 else np.zeros(n_rows)  # S - e_top1 - e_top2
    top1, top2 = order[:, 0], order[:, 1] if e.shape[1] > 1 else order[:, 0]
    rows = np.arange(n_rows)

    # others1[r, b] = S - e_b, from the tail sums for the largest weight.
    others1 = total[:, None] - e
    others1[rows, top1] = rest1
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(others1 > 0, e / others1, 0.0)  # e_b / (S - e_b)
        p0 = e / total[:, None]
        filled = chosen >= 0
        a = np.where(filled, chosen, 0)
        e_a = e[rows[:, None], a]
        out[:, 0] = np.where(filled[:, 0], p0[rows, a[:, 0]], np.nan)
        if k >= 2:
            # sum_{b != a} (e_b / S) e_a / (S - e_b) = e_a / S * (sum_b ratio_b - ratio_a)
            r_sum = ratio.sum(axis=1)
            a1 = a[:, 1]
            p1 = e_a[:, 1] / total * (r_sum - ratio[rows, a1])
            out[:, 1] = np.where(filled[:, 1], p1, np.nan)
        if k >= 3:
            a2 = a[:, 2]
            # left[r, b, c] = S - e_b - e_c for b != c.
            left = total[:, None, None] - e[:, :, None] - e[:, None, :]
            # Pairs holding the largest weight: form the sum from the others' tail.
            left[rows, top1, :] = rest1[:, None] - e
            left[rows, :, top1] = rest1[:, None] - e
            left[rows, top1, top2] = rest2
            left[rows, top2, top1] = rest2
            pair = np.where(
                left > 0,
                (e / total[:, None])[:, :, None] * (e[:, None, :] / others1[:, :, None]),
                0.0,
            )
            pair = np.where(left > 0, pair / np.where(left > 0, left, 1.0), 0.0)
            n = e.shape[1]
            diag = np.arange(n)
            pair[:, diag, diag] = 0.0
            # sum over pairs without a: total - pairs with b = a - pairs with c = a
            pair_total = pair.sum(axis=(1, 2))
            without = pair_total - pair[rows, a2, :].sum(axis=1) - pair[rows, :, a2].sum(axis=1)
            out[:, 2] = np.where(filled[:, 2], e_a[:, 2] * without, np.nan)
    return np.clip(out, 0.0, 1.0)
