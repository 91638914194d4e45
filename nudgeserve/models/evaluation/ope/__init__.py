"""Off-policy evaluation (OPE): what a new policy would earn, estimated from logged decisions.

Logged bandit feedback is one row per decision (per slot, for slates), made by a *logging*
policy that recorded the probability (propensity) of what it chose. Given an *evaluation*
policy's action probabilities for the same rows, the estimators here estimate that
policy's value: its expected reward per row.

Arrays (``n`` rows, ``A`` actions, ``P`` positions):

- ``actions: int64[n]`` the logged action (index into the ``A`` candidates).
- ``rewards: float64[n]`` the observed reward (a click: 0/1).
- ``propensities: float64[n]`` the logging policy's probability of ``actions[i]`` (at
  ``positions[i]``), in ``(0, 1]``.
- ``action_dist: float64[n, A]`` the evaluation policy's distribution over actions per
  row, or ``float64[n, A, P]`` per position (like obp's ``action_dist``); then
  ``positions: int64[n]`` (0-based) says which position each row is. A policy's position
  distributions come from ``nudgeserve.models.policies.slates``.
- ``reward_hat: float64[n, A]`` / ``[n, A, P]`` a reward model's prediction for every
  action (needed by DM, DR and SNDR).
- ``logging_dist`` (optional), shaped like ``action_dist``: the logging policy's full
  distribution, used to detect evaluation-policy mass on actions it never takes.

Estimators (``w = pi(a_i) / propensities[i]``, ``q`` = ``reward_hat``):

- ``ips``: mean(w r). Unbiased when the logger covers the evaluation policy's support.
- ``clipped_ips``: mean(min(w, max_weight) r). Less variance; biased toward 0 (r >= 0).
- ``snips``: sum(w r) / sum(w). Self-normalized: slightly biased, consistent, in range.
- ``dm``: mean over rows of sum_a pi(a) q(a). As good as the reward model.
- ``dr``: dm + mean(w (r - q(a_i))). Unbiased if either the propensities or q are right.
- ``sndr``: dm + sum(w (r - q(a_i))) / sum(w).

Every estimate comes with a percentile bootstrap interval, Kish's effective sample size
``(sum w)^2 / sum w^2`` and warnings when overlap is too weak to trust the number.

The bootstrap is the Poisson bootstrap of ``nudgeserve.kernels.poisson_bootstrap_sums``:
each row enters each replicate a Poisson(1) number of times, drawn from a hash of
``(seed, row key, replicate)`` instead of a sequential RNG. Every estimator is a function
of a few sums over rows, and these sums (point and per replicate) merge across any
partitioning of the rows: the distributed evaluator (``nudgeserve.serve.ray.ope_data``)
reproduces this package's estimates and intervals when both key the rows by decision id.

Modules, by job: ``_estimators`` (``evaluate`` and the single estimators on arrays),
``_statistics`` (the mergeable sufficient statistics and the summaries they give),
``_logs`` (the joined-log schema, its Arrow/Parquet I/O and evaluation of joined logs),
``_checks`` (input validation). Import the names from here.
"""

from nudgeserve.models.errors import InvalidLogs, InvalidLogsType
from nudgeserve.models.evaluation.ope._checks import validate_settings
from nudgeserve.models.evaluation.ope._estimators import (
    clipped_ips,
    direct_method,
    doubly_robust,
    evaluate,
    ips,
    on_policy_value,
    sn_doubly_robust,
    snips,
)
from nudgeserve.models.evaluation.ope._logs import (
    OPE_LOG_COLUMNS,
    LogColumn,
    OPELogs,
    RaggedRows,
    decision_keys,
    evaluate_logs,
    logs_from_table,
    logs_statistics,
    logs_to_table,
    parquet_columns,
    parquet_files,
    read_logs_parquet,
)
from nudgeserve.models.evaluation.ope._statistics import (
    DEFAULT_MAX_WEIGHT,
    DEFAULT_MIN_ESS,
    DEFAULT_MIN_ESS_FRACTION,
    DEFAULT_N_BOOTSTRAP,
    ESTIMATORS,
    REQUIRES_REWARD_MODEL,
    OPEResult,
    OPEStatistics,
    logging_policy_value,
    summarize,
)

__all__ = [
    "DEFAULT_MAX_WEIGHT",
    "DEFAULT_MIN_ESS",
    "DEFAULT_MIN_ESS_FRACTION",
    "DEFAULT_N_BOOTSTRAP",
    "ESTIMATORS",
    "OPE_LOG_COLUMNS",
    "REQUIRES_REWARD_MODEL",
    "InvalidLogs",
    "InvalidLogsType",
    "LogColumn",
    "OPELogs",
    "OPEResult",
    "OPEStatistics",
    "RaggedRows",
    "clipped_ips",
    "decision_keys",
    "direct_method",
    "doubly_robust",
    "evaluate",
    "evaluate_logs",
    "ips",
    "logging_policy_value",
    "logs_from_table",
    "logs_statistics",
    "logs_to_table",
    "on_policy_value",
    "parquet_columns",
    "parquet_files",
    "read_logs_parquet",
    "sn_doubly_robust",
    "snips",
    "summarize",
    "validate_settings",
]
