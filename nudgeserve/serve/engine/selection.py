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
  ``nudgeserve.models.policies.slates.plackett_luce_marginals`` turns it into the exact
  marginal (slots 0..2; the config caps such use cases at ``max_k`` 3);
- Thompson sampling per arm: the kernel's marginal (deterministic quadrature) under the
  learner's Beta posteriors (``slates.beta_posteriors``);
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
from nudgeserve.models.policies.slates import beta_posteriors, plackett_luce_marginals
from nudgeserve.serve.config import (
    Control,
    EpsilonGreedy,
    Greedy,
    LinearBanditPolicy,
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
        key = (
            keys[row]
            if keys is not None and isinstance(policy, Thompson | LinearBanditPolicy)
            else ""
        )
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
    if isinstance(policy, LinearBanditPolicy):
        return _linear(k, policy, seeds, excluded, state, rows, key)
    raise TypeError(f"policy must be one of the configured policy kinds, got {policy!r}")


def _thompson(shape, k, policy: Thompson, seeds, excluded, state: SelectionState, key: str):
    counts = state.arm_counts(key) if state.arm_counts is not None else None
    successes = failures = None
    if counts is not None and len(counts[0]):
        # Counts cover the catalog; inline candidates after it keep the prior.
        successes, failures = counts[0][: state.n_catalog], counts[1][: state.n_catalog]
    alpha, beta = beta_posteriors(
        shape[1], policy.prior_alpha, policy.prior_beta, successes, failures
    )
    return thompson_bernoulli_slate(alpha, beta, k, seeds, mask=excluded)


def _linear(k, policy: LinearBanditPolicy, seeds, excluded, state: SelectionState, rows, key: str):
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
