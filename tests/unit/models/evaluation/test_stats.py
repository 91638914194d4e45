"""Rate and mean intervals against published worked examples and their edge cases.

Newcombe (1998), "Interval estimation for the difference between independent
proportions", Statistics in Medicine 17: 873-890, Table II, method 10; and "Two-sided
confidence intervals for the single proportion", Statistics in Medicine 17: 857-872,
Table I (Wilson score interval). Published figures have 4 decimals: hence abs=5e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from nudgeserve.models.evaluation.stats import (
    mean_interval,
    newcombe_difference,
    relative_lift,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611)],
)
def test_wilson_interval_matches_newcombe(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_stays_in_the_unit_interval():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(10, 10)
    assert 0.0 < low < high <= 1.0


@pytest.mark.parametrize(
    ("k1", "n1", "k0", "n0", "low", "high"),
    [(56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090)],
)
def test_newcombe_difference_matches_the_paper(k1, n1, k0, n0, low, high):
    diff, got_low, got_high = newcombe_difference(k1, n1, k0, n0)
    assert diff == pytest.approx(k1 / n1 - k0 / n0)
    assert (got_low, got_high) == pytest.approx((low, high), abs=5e-5)
    assert all(math.isnan(x) for x in newcombe_difference(1, 0, 1, 10))


def test_relative_lift_uses_the_log_ratio_interval():
    lift, low, high = relative_lift(20, 100, 10, 100)
    se = math.sqrt(1 / 20 - 1 / 100 + 1 / 10 - 1 / 100)
    assert lift == pytest.approx(1.0)
    assert (low, high) == pytest.approx(
        (2 * math.exp(-1.959964 * se) - 1, 2 * math.exp(1.959964 * se) - 1)
    )
    # A zero count gets the continuity correction instead of an infinite ratio.
    lift, low, high = relative_lift(5, 100, 0, 100)
    assert math.isfinite(lift) and low < lift < high
    assert all(math.isnan(x) for x in relative_lift(5, 0, 0, 100))


def test_mean_interval_is_the_normal_approximation():
    mean, low, high = mean_interval(np.array([1.0, 2.0, 3.0, 4.0]))
    half = 1.959963984540054 * np.std([1.0, 2.0, 3.0, 4.0], ddof=1) / 2
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert math.isnan(mean_interval(np.array([7.0]))[1])
    assert all(math.isnan(x) for x in mean_interval(np.zeros(0)))
