"""Metrics against direct computations and known cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from nudgeserve.models.evaluation.metrics import (
    ate_difference_in_means,
    auuc,
    bootstrap_classification,
    log_loss,
    perfect_uplift_scores,
    qini_coefficient,
    qini_curve,
    qini_report,
    roc_auc,
    smoothed_rate_by_group,
)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 300),
    levels=st.integers(1, 8),
)
def test_roc_auc_and_log_loss_match_sklearn(seed, n, levels):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    # Few distinct levels: many ties, which the rank formula must count as halves.
    p = rng.integers(0, levels, n) / levels + 0.01
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)


def test_roc_auc_without_both_classes_is_nan():
    assert np.isnan(roc_auc(np.zeros(5), np.arange(5)))


def test_bootstrap_intervals_are_paired_and_reproducible():
    rng = np.random.default_rng(0)
    n = 4000
    x = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x - 4)))).astype(np.int8)
    good = 1 / (1 + np.exp(-(x - 4)))
    const = np.full(n, y.mean())
    a = bootstrap_classification(
        y, {"const": const, "good": good}, n_resamples=200, seed=1, reference="const"
    )
    b = bootstrap_classification(
        y, {"const": const, "good": good}, n_resamples=200, seed=1, reference="const"
    )
    assert a["good"]["auc"] == b["good"]["auc"]
    assert a["good"]["auc"].estimate == pytest.approx(roc_auc_score(y, good))
    assert a["good"]["log_loss"].estimate == pytest.approx(sk_log_loss(y, good))
    for values in a.values():
        for interval in values.values():
            assert interval.low <= interval.estimate <= interval.high
    assert a["const"]["auc"].width == 0  # a constant ranks nothing, in every resample
    assert a["const"]["calibration"].estimate == pytest.approx(1.0)
    # The informative model beats the constant in (nearly) every paired resample.
    assert a["good"]["auc_minus_const"].low > 0.1
    assert a["good"]["log_loss_minus_const"].high < 0


def test_ate_difference_in_means_matches_direct_computation():
    rng = np.random.default_rng(3)
    treatment = rng.integers(0, 3, 5000)
    y = rng.normal(size=5000) + 0.3 * (treatment == 2)
    est = ate_difference_in_means(y, treatment, treated_arm=2, control_arm=0)
    yt, yc = y[treatment == 2], y[treatment == 0]
    assert est.ate == pytest.approx(yt.mean() - yc.mean(), rel=1e-12)
    se = np.sqrt(np.var(yt, ddof=1) / yt.size + np.var(yc, ddof=1) / yc.size)
    assert est.se == pytest.approx(se, rel=1e-12)
    assert est.low == pytest.approx(est.ate - 1.959964 * se)
    assert est.high == pytest.approx(est.ate + 1.959964 * se)
    assert (est.n_treated, est.n_control) == (yt.size, yc.size)
    with pytest.raises(ValueError, match="each arm"):
        ate_difference_in_means(y, treatment, treated_arm=7, control_arm=0)


def _synthetic_uplift(seed: int, n: int = 6000):
    """Customers whose true uplift rises with x; half treated at random."""
    rng = np.random.default_rng(seed)
    x = rng.random(n)
    treated = rng.random(n) < 0.5
    rate = 0.1 + 0.3 * x * treated
    y = (rng.random(n) < rate).astype(np.float64)
    return x, y, treated


def test_qini_perfect_ranking_is_the_maximum_and_random_is_near_zero():
    x, y, treated = _synthetic_uplift(0)
    perfect = qini_coefficient(perfect_uplift_scores(y, treated), y, treated)
    informed = qini_coefficient(x, y, treated)
    reversed_ = qini_coefficient(-x, y, treated)
    rng = np.random.default_rng(1)
    randoms = [qini_coefficient(rng.random(y.size), y, treated) for _ in range(50)]
    assert perfect > informed > 0 > reversed_
    assert all(perfect >= r for r in randoms)
    assert abs(np.mean(randoms)) < 0.2 * informed
    # A constant score targets everyone at once: exactly the random line.
    assert qini_coefficient(np.zeros(y.size), y, treated) == pytest.approx(0.0, abs=1e-15)


def test_qini_curve_endpoints_and_by_hand():
    # Two treated responders ranked first, then a control responder: by hand.
    uplift = np.array([3.0, 2.0, 1.0, 0.0])
    y = np.array([1.0, 1.0, 1.0, 0.0])
    treated = np.array([True, True, False, False])
    fraction, qini = qini_curve(uplift, y, treated)
    np.testing.assert_allclose(fraction, [0, 0.25, 0.5, 0.75, 1.0])
    # q(k) = (Y_t - Y_c * N_t / N_c) / n
    np.testing.assert_allclose(qini, np.array([0, 1, 2, 2 - 1 * 2 / 1, 2 - 1 * 2 / 2]) / 4)
    ate = ate_difference_in_means(y, treated.astype(int), 1, 0).ate
    assert qini[-1] == pytest.approx(ate * treated.sum() / y.size)


def test_qini_report_flags_an_informative_model():
    x, y, treated = _synthetic_uplift(2)
    report = qini_report(x, y, treated, n_random=50, n_resamples=50, seed=0)
    assert report["qini"].low > report["random_qini"].high
    assert report["p_random_ge_model"] == 0.0
    assert 0 < report["qini_normalized"] <= 1
    assert report["auuc"] > 0
    noise = qini_report(
        np.random.default_rng(9).random(y.size), y, treated, n_random=50, n_resamples=50, seed=0
    )
    assert noise["qini"].low < 0 < noise["qini"].high or noise["p_random_ge_model"] > 0.01


def test_auuc_orders_rankings():
    x, y, treated = _synthetic_uplift(4)
    assert auuc(x, y, treated) > 0 > auuc(-x, y, treated)
    assert auuc(np.zeros(y.size), y, treated) == pytest.approx(0.0, abs=1e-15)


def test_smoothed_rate_by_group():
    groups = np.array([0, 0, 1, 1, 1, 1])
    y = np.array([1, 1, 0, 0, 0, 0], dtype=float)
    rates = smoothed_rate_by_group(groups, y, 3, prior_strength=2.0)
    overall = 2 / 6
    np.testing.assert_allclose(rates, [(2 + 2 * overall) / 4, (0 + 2 * overall) / 6, overall])
