"""Are an uplift model's intervals calibrated? Checked on groups of held-out customers.

Calibration can only be checked where the truth is observable: for groups of customers.
``group_calibration`` sorts held-out customers into groups (deciles) by predicted uplift and
asks, per group, whether the experiment's own difference in means lies where the model's
interval of the group mean plus the difference's sampling error says it should
(``z = (observed - predicted) / sqrt(model_sd^2 + se^2)``; calibrated: ``|z| <= 1.96`` in
about 95% of groups, mean ``z^2`` about 1). ``fit_interval_scale`` is the factor that makes
them so (how the ensemble's intervals are widened, ``learn.uplift_ensemble``).

Works on an ensemble's prediction (``EnsemblePrediction``: the members' per-customer
predictions), NumPy only: the model need not be loaded to evaluate what it predicted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec
import numpy as np

from nudgeserve.models.evaluation.metrics import ate_difference_in_means
from nudgeserve.models.evaluation.stats import two_sided_z
from nudgeserve.models.evaluation.tables import format_table

if TYPE_CHECKING:
    from nudgeserve.models.learn.uplift_ensemble import EnsemblePrediction

__all__ = [
    "CalibrationSummary",
    "GroupCalibration",
    "calibration_summary",
    "calibration_table",
    "fit_interval_scale",
    "group_calibration",
]


class GroupCalibration(msgspec.Struct, frozen=True, kw_only=True):
    """One group of customers (``group`` 0 = lowest predicted uplift of ``treatment``).

    predicted: the members' mean uplift averaged over the group's rows; model_sd: sd of
    that group mean across members, times the interval scale; observed / observed_se:
    the experiment's difference in means in the group and its Neyman standard error;
    z = (observed - predicted) / sqrt(model_sd^2 + observed_se^2).
    """

    treatment: str
    outcome: str
    group: int
    n_treated: int
    n_control: int
    predicted: float
    model_sd: float
    observed: float
    observed_se: float
    z: float


class CalibrationSummary(msgspec.Struct, frozen=True, kw_only=True):
    """Group-level calibration of one outcome's intervals on one split.

    coverage: share of groups with ``|z| <= z(level)`` (calibrated: about ``level``).
    coverage_sampling_only: the same share when the model's sd is ignored (treating the
        prediction as exact): how much the intervals add beyond the experiment's noise.
    mean_z2: mean of z^2 (calibrated: about 1; above 1: intervals too narrow or biased).
    mean_model_sd / mean_observed_se: average sizes of the two error terms.
    mean_unit_sd: average per-customer sd (scaled) of the uplift, over treatments.
    """

    split: str
    outcome: str
    level: float
    interval_scale: float
    n_groups: int
    coverage: float
    coverage_sampling_only: float
    mean_z2: float
    mean_model_sd: float
    mean_observed_se: float
    mean_unit_sd: float
    groups: tuple[GroupCalibration, ...]


def group_calibration(
    prediction: EnsemblePrediction,
    treatment: np.ndarray,
    y: np.ndarray,
    outcome: str,
    *,
    n_groups: int = 10,
    scale: float | None = None,
) -> tuple[GroupCalibration, ...]:
    """Groups of held-out customers by predicted uplift, predicted vs observed effect.

    prediction: the ensemble's prediction for n customers; treatment: int64[n] their
    randomised arms; y: float64[n] the observed ``outcome``. For each treatment, the
    customers of that arm and of the control are cut into ``n_groups`` equal-size groups
    by the members' mean predicted uplift. scale: the sd multiplier (default the
    prediction's ``interval_scale`` for ``outcome``).
    """
    treatment = np.asarray(treatment)
    y = np.asarray(y, dtype=np.float64)
    n = len(prediction)
    if treatment.shape != (n,) or y.shape != (n,):
        raise ValueError(
            f"treatment and y must have shape ({n},) like the prediction, got "
            f"{treatment.shape} and {y.shape}"
        )
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
        raise ValueError(f"n_groups must be an int >= 1, got {n_groups!r}")
    if scale is None:
        scale = float(prediction.interval_scale.get(outcome, 1.0))
    uplift = prediction.member_uplift(outcome).astype(np.float64)  # [K, n, T]
    control = prediction.control_index
    out = []
    for arm, arm_name in enumerate(prediction.treatments):
        if arm == control:
            continue
        rows = np.flatnonzero((treatment == arm) | (treatment == control))
        members = uplift[:, rows, arm]
        order = np.argsort(members.mean(axis=0), kind="stable")
        for g, part in enumerate(np.array_split(order, n_groups)):
            group_rows = rows[part]
            ate = ate_difference_in_means(y[group_rows], treatment[group_rows], arm, control)
            member_means = members[:, part].mean(axis=1)
            model_sd = scale * float(member_means.std(ddof=1)) if member_means.size > 1 else 0.0
            predicted = float(member_means.mean())
            total_sd = math.sqrt(model_sd**2 + ate.se**2)
            out.append(
                GroupCalibration(
                    treatment=arm_name,
                    outcome=outcome,
                    group=g,
                    n_treated=ate.n_treated,
                    n_control=ate.n_control,
                    predicted=predicted,
                    model_sd=model_sd,
                    observed=ate.ate,
                    observed_se=ate.se,
                    z=(ate.ate - predicted) / total_sd if total_sd > 0 else math.nan,
                )
            )
    return tuple(out)


def fit_interval_scale(groups: Sequence[GroupCalibration]) -> float:
    """The sd multiplier (>= 1) that makes the groups' z^2 average 1, by moments.

    With d = observed - predicted, E[d^2] = scale^2 model_sd^2 + se^2 when the intervals
    are right up to the factor; so scale^2 = sum(d^2 - se^2) / sum(model_sd^2), floored
    at 1. ``groups`` must have been computed with scale 1.
    """
    d2 = sum((g.observed - g.predicted) ** 2 - g.observed_se**2 for g in groups)
    sd2 = sum(g.model_sd**2 for g in groups)
    if sd2 <= 0:
        return 1.0
    return float(math.sqrt(max(1.0, d2 / sd2)))


def calibration_summary(
    prediction: EnsemblePrediction,
    treatment: np.ndarray,
    y: np.ndarray,
    outcome: str,
    *,
    split: str,
    n_groups: int = 10,
    level: float = 0.95,
    scale: float | None = None,
) -> CalibrationSummary:
    """``group_calibration`` and its coverage statistics (see ``CalibrationSummary``)."""
    z = two_sided_z(level)
    if scale is None:
        scale = float(prediction.interval_scale.get(outcome, 1.0))
    groups = group_calibration(prediction, treatment, y, outcome, n_groups=n_groups, scale=scale)
    zs = np.array([g.z for g in groups])
    d = np.array([g.observed - g.predicted for g in groups])
    se = np.array([g.observed_se for g in groups])
    u = prediction.member_uplift(outcome).astype(np.float64)
    treated_columns = [a for a in range(u.shape[2]) if a != prediction.control_index]
    unit_sd = u[:, :, treated_columns].std(axis=0, ddof=1) * scale if u.shape[0] > 1 else 0.0
    return CalibrationSummary(
        split=split,
        outcome=outcome,
        level=float(level),
        interval_scale=float(scale),
        n_groups=len(groups),
        coverage=float(np.mean(np.abs(zs) <= z)),
        coverage_sampling_only=float(np.mean(np.abs(d) <= z * se)),
        mean_z2=float(np.mean(zs**2)),
        mean_model_sd=float(np.mean([g.model_sd for g in groups])),
        mean_observed_se=float(np.mean(se)),
        mean_unit_sd=float(np.mean(unit_sd)),
        groups=groups,
    )


def calibration_table(summaries: Sequence[CalibrationSummary]) -> str:
    """One line per (split, outcome) summary."""
    rows = [
        [
            s.split,
            s.outcome,
            f"{s.interval_scale:.2f}",
            str(s.n_groups),
            f"{s.coverage:.2f}",
            f"{s.coverage_sampling_only:.2f}",
            f"{s.mean_z2:.2f}",
            f"{s.mean_model_sd:.3g}",
            f"{s.mean_observed_se:.3g}",
            f"{s.mean_unit_sd:.3g}",
        ]
        for s in summaries
    ]
    return format_table(
        [
            "split",
            "outcome",
            "scale",
            "groups",
            "coverage",
            "coverage (sampling only)",
            "mean z^2",
            "group model sd",
            "group DIM se",
            "unit sd",
        ],
        rows,
    )
