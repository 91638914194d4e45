"""Group calibration of uplift intervals: the groups against a direct computation, the
fitted scale by moments, and nominal coverage on synthetic randomised data with a known
member spread.

Every random draw is seeded.
"""

from __future__ import annotations

import numpy as np
import pytest

from nudgeserve.models.evaluation.uplift_calibration import (
    GroupCalibration,
    calibration_summary,
    fit_interval_scale,
    group_calibration,
)
from nudgeserve.models.learn.uplift_ensemble import EnsemblePrediction
from nudgeserve.models.specs import HILLSTROM_TREATMENTS


def test_group_calibration_matches_a_direct_computation():
    rng = np.random.default_rng(2)
    n, k = 3000, 4
    treatment = rng.integers(0, 3, n)
    y = rng.random(n).astype(np.float64)
    members = rng.uniform(0, 1, (k, n, 3, 3)).astype(np.float32)
    prediction = EnsemblePrediction(members, HILLSTROM_TREATMENTS, 0, {})
    groups = group_calibration(prediction, treatment, y, "visit", n_groups=3, scale=2.0)
    assert [g.group for g in groups] == [0, 1, 2, 0, 1, 2]
    # Recompute the top group of treatment 2 by hand.
    rows = np.flatnonzero((treatment == 2) | (treatment == 0))
    u = members[:, rows, 0, 2].astype(np.float64) - members[:, rows, 0, 0]
    top = rows[np.array_split(np.argsort(u.mean(0), kind="stable"), 3)[2]]
    g = groups[5]
    yt, yc = y[top][treatment[top] == 2], y[top][treatment[top] == 0]
    assert g.n_treated == yt.size and g.n_control == yc.size
    assert g.observed == pytest.approx(yt.mean() - yc.mean())
    assert g.observed_se == pytest.approx(
        np.sqrt(yt.var(ddof=1) / yt.size + yc.var(ddof=1) / yc.size)
    )
    member_means = (members[:, top, 0, 2].astype(np.float64) - members[:, top, 0, 0]).mean(axis=1)
    assert g.predicted == pytest.approx(member_means.mean())
    assert g.model_sd == pytest.approx(2.0 * member_means.std(ddof=1))
    assert g.z == pytest.approx((g.observed - g.predicted) / np.hypot(g.model_sd, g.observed_se))


def _group(d: float, model_sd: float, se: float) -> GroupCalibration:
    return GroupCalibration(
        treatment="t",
        outcome="visit",
        group=0,
        n_treated=10,
        n_control=10,
        predicted=0.0,
        model_sd=model_sd,
        observed=d,
        observed_se=se,
        z=0.0,
    )


def test_fit_interval_scale_by_moments_floored_at_one():
    # sum(d^2 - se^2) / sum(sd^2) = (0.25 + 0.25 - 0.02) / (0.01 + 0.01) = 24 -> sqrt 4.9
    groups = [_group(0.5, 0.1, 0.1), _group(-0.5, 0.1, 0.1)]
    assert fit_interval_scale(groups) == pytest.approx(np.sqrt(24.0))
    # Errors smaller than the sampling noise never narrow the intervals.
    assert fit_interval_scale([_group(0.01, 0.1, 0.2)]) == 1.0
    assert fit_interval_scale([_group(0.3, 0.0, 0.1)]) == 1.0


def test_calibrated_intervals_cover_on_synthetic_randomised_data():
    # Members scatter around the true uplift with exactly the spread the interval
    # claims; the observed group effects then fall inside at about the nominal rate.
    rng = np.random.default_rng(4)
    n, k = 60_000, 8
    x = rng.uniform(-1, 1, n)
    true_uplift = 0.05 + 0.04 * x
    treatment = rng.integers(0, 3, n)
    base = 0.2
    p = base + np.where(treatment > 0, true_uplift, 0.0)
    y = (rng.random(n) < p).astype(np.float64)
    member_shift = rng.normal(0, 0.004, (k, 1))  # the estimation error of each member
    members = np.empty((k, n, 3, 3), dtype=np.float32)
    members[:, :, :, 0] = base
    members[:, :, :, 1] = base + true_uplift[None, :, None] + member_shift[:, :, None]
    members[:, :, :, 2] = members[:, :, :, 1]
    prediction = EnsemblePrediction(members, HILLSTROM_TREATMENTS, 0, {})
    summary = calibration_summary(prediction, treatment, y, "visit", split="synthetic", n_groups=20)
    assert summary.n_groups == 40
    assert summary.coverage >= 0.85, summary
    assert 0.4 < summary.mean_z2 < 2.0, summary
