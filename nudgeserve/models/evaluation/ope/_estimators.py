"""The estimators on arrays: ``evaluate`` runs any of them on one bootstrap resampling.

See the package docstring for the estimators and the array layouts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nudgeserve.kernels import poisson_bootstrap_sums
from nudgeserve.models.errors import InvalidLogs
from nudgeserve.models.evaluation.ope._checks import (
    CHUNK_CELLS,
    SUM_TOLERANCE,
    check_keys,
    check_probabilities,
    check_propensities,
    check_seed,
    check_settings,
    float_array,
    int_array,
)
from nudgeserve.models.evaluation.ope._statistics import (
    DEFAULT_MAX_WEIGHT,
    DEFAULT_MIN_ESS,
    DEFAULT_MIN_ESS_FRACTION,
    DEFAULT_N_BOOTSTRAP,
    OPEResult,
    OPEStatistics,
    divide_or_nan,
    estimator_names,
    percentile_interval,
    row_statistics,
    summarize,
    support_counts,
)


def evaluate(
    actions: np.ndarray,
    rewards: np.ndarray,
    propensities: np.ndarray,
    action_dist: np.ndarray,
    *,
    positions: np.ndarray | None = None,
    reward_hat: np.ndarray | None = None,
    logging_dist: np.ndarray | None = None,
    estimators: Sequence[str] | None = None,
    max_weight: float = DEFAULT_MAX_WEIGHT,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    bootstrap_keys: np.ndarray | None = None,
    min_ess: float = DEFAULT_MIN_ESS,
    min_ess_fraction: float = DEFAULT_MIN_ESS_FRACTION,
) -> dict[str, OPEResult]:
    """Estimate the evaluation policy's value with several estimators on one resampling.

    actions: int64[n]; rewards: float64[n]; propensities: float64[n] in (0, 1].
    action_dist: float64[n, A], or float64[n, A, P] with positions: int64[n] (0-based).
        Broadcast views (``np.broadcast_to``) are fine: rows are read in chunks.
    reward_hat: float64 shaped like action_dist (required for dm, dr, sndr).
    logging_dist: float64 shaped like action_dist (optional: support diagnostics, and
        ``propensities`` must then equal its entry at the logged action).
    estimators: names from ``ESTIMATORS``; default every one the inputs allow.
    max_weight: clipped IPS clips importance weights at this value.
    n_bootstrap / confidence / seed: Poisson bootstrap replicates, the interval's
        coverage and the seed; all estimators share the same replicates.
    bootstrap_keys: uint64[n] stable row keys (``decision_keys(ids)``); default row index.
    min_ess / min_ess_fraction: warn when Kish's ESS falls below either.
    Returns {estimator: OPEResult}.
    """
    check_settings(n_bootstrap, max_weight, confidence)
    seed = check_seed(seed)
    actions = int_array("actions", actions)
    n = actions.shape[0]
    if n == 0:
        raise InvalidLogs("actions is empty: there are no rows to evaluate")
    rewards = float_array("rewards", rewards, 1)
    propensities = float_array("propensities", propensities, 1)
    for name, arr in (("rewards", rewards), ("propensities", propensities)):
        if arr.shape[0] != n:
            raise InvalidLogs(f"{name} has {arr.shape[0]} rows but actions has {n}")
    check_propensities("propensities", propensities)
    dist = float_array("action_dist", action_dist, (2, 3))
    if dist.shape[0] != n:
        raise InvalidLogs(f"action_dist has {dist.shape[0]} rows but actions has {n}")
    if dist.ndim == 2:
        if positions is not None:
            raise InvalidLogs("positions given but action_dist is 2-D [n, A]; pass [n, A, P]")
        dist = dist[:, :, None]
        positions = np.zeros(n, dtype=np.int64)
    else:
        if positions is None:
            raise InvalidLogs("positions is required when action_dist is 3-D [n, A, P]")
        positions = int_array("positions", positions)
        if positions.shape[0] != n:
            raise InvalidLogs(f"positions has {positions.shape[0]} rows but actions has {n}")
    n_actions, n_positions = dist.shape[1], dist.shape[2]
    if actions.min() < 0 or actions.max() >= n_actions:
        raise InvalidLogs(
            f"actions must be in [0, {n_actions}) (action_dist has {n_actions} actions); "
            f"found [{actions.min()}, {actions.max()}]"
        )
    if positions.min() < 0 or positions.max() >= n_positions:
        raise InvalidLogs(
            f"positions must be in [0, {n_positions}) (action_dist has {n_positions}); "
            f"found [{positions.min()}, {positions.max()}]"
        )

    def like_dist(name: str, x: object) -> np.ndarray | None:
        if x is None:
            return None
        a = float_array(name, x, (2, 3))
        a = a[:, :, None] if a.ndim == 2 else a
        if a.shape != dist.shape:
            raise InvalidLogs(f"{name} must have action_dist's shape {dist.shape}, got {a.shape}")
        return a

    q_all = like_dist("reward_hat", reward_hat)
    b_all = like_dist("logging_dist", logging_dist)
    names = estimator_names(estimators, q_all is not None)
    keys = check_keys(bootstrap_keys, n)
    # Chunks keep broadcast (context-free) distributions from being materialized whole.
    step = max(1024, CHUNK_CELLS // (n_actions * n_positions))
    total: OPEStatistics | None = None
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        idx = np.arange(rows.start, rows.stop)
        a, pos = actions[rows], positions[rows]
        check_probabilities("action_dist", dist[rows], dist[rows].sum(axis=1), start)
        pi = dist[idx, :, pos]
        dm = q_logged = None
        if q_all is not None:
            q = q_all[idx, :, pos]
            dm = np.einsum("ij,ij->i", pi, q)
            q_logged = q[np.arange(q.shape[0]), a]
        unsupported = math.nan
        if b_all is not None:
            check_probabilities("logging_dist", b_all[rows], b_all[rows].sum(axis=1), start)
            b = b_all[idx, :, pos]
            logged_p = b[np.arange(b.shape[0]), a]
            mismatch = np.abs(logged_p - propensities[rows])
            if mismatch.max() > SUM_TOLERANCE:
                i = int(mismatch.argmax())
                raise InvalidLogs(
                    f"propensities[{start + i}]={propensities[start + i]:.6g} disagrees "
                    f"with logging_dist at the logged action ({logged_p[i]:.6g})"
                )
            unsupported = float(np.sum(pi * (b <= 0.0)))
        part = row_statistics(
            rewards=rewards[rows],
            propensities=propensities[rows],
            pi_logged=pi[np.arange(pi.shape[0]), a],
            keys=keys[rows],
            dm=dm,
            q_logged=q_logged,
            support=support_counts(pos, a, pi, n_positions),
            unsupported_mass=unsupported,
            max_weight=max_weight,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
        total = part if total is None else total.merge(part)
    assert total is not None
    return summarize(
        total, names, confidence=confidence, min_ess=min_ess, min_ess_fraction=min_ess_fraction
    )


def ips(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Inverse propensity scoring: mean(w r). Arguments and keywords as ``evaluate``."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("ips",), **kwargs)[
        "ips"
    ]


def clipped_ips(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """IPS with weights clipped at ``max_weight``: mean(min(w, max_weight) r)."""
    return evaluate(
        actions, rewards, propensities, action_dist, estimators=("clipped_ips",), **kwargs
    )["clipped_ips"]


def snips(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Self-normalized IPS: sum(w r) / sum(w)."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("snips",), **kwargs)[
        "snips"
    ]


def direct_method(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Direct method: mean_i sum_a pi(a|i) reward_hat(i, a) (``reward_hat=`` required).

    Its interval reflects the sampling of rows only, not the reward model's error.
    """
    return evaluate(actions, rewards, propensities, action_dist, estimators=("dm",), **kwargs)["dm"]


def doubly_robust(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Doubly robust: DM + mean(w (r - reward_hat(i, a_i))) (``reward_hat=`` required)."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("dr",), **kwargs)["dr"]


def sn_doubly_robust(actions, rewards, propensities, action_dist, **kwargs: Any) -> OPEResult:
    """Self-normalized DR: DM + sum(w (r - reward_hat(i, a_i))) / sum(w)."""
    return evaluate(actions, rewards, propensities, action_dist, estimators=("sndr",), **kwargs)[
        "sndr"
    ]


def on_policy_value(
    rewards: np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP,
    confidence: float = 0.95,
    seed: int = 0,
    bootstrap_keys: np.ndarray | None = None,
) -> OPEResult:
    """The logging policy's own value: the mean reward, with the same bootstrap interval.

    rewards: float64[n]; bootstrap_keys: uint64[n] (default row index).
    """
    check_settings(n_bootstrap, 1.0, confidence)
    seed = check_seed(seed)
    r = float_array("rewards", rewards, 1)
    n = r.shape[0]
    if n == 0:
        raise InvalidLogs("rewards is empty: there are no rows to evaluate")
    boot = poisson_bootstrap_sums(
        check_keys(bootstrap_keys, n), np.stack([np.ones(n), r], axis=1), n_bootstrap, seed
    )
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high, _ = percentile_interval(divide_or_nan(boot[:, 1], boot[:, 0]), tail)
    return OPEResult(
        estimator="on_policy",
        estimate=float(r.mean()),
        ci_low=low,
        ci_high=high,
        confidence=float(confidence),
        ess=float(n),
        n=n,
        max_weight=1.0,
    )
