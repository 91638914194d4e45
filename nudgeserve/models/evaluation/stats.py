"""Closed-form intervals for rates and means: what an experiment report quotes per arm.

- ``wilson_interval``: a binomial proportion (the share of decisions with an outcome);
  keeps its coverage near 0 and 1, where the normal approximation fails.
- ``newcombe_difference``: the difference of two proportions (an arm minus the control)
  with Newcombe's hybrid score interval (method 10), built from the two Wilson intervals.
- ``relative_lift``: the ratio of two proportions minus 1, with the log rate-ratio
  (Katz) interval.
- ``mean_interval``: a mean with the normal-approximation interval;
- ``two_sided_z``: the normal quantile of a two-sided level (0.95 -> 1.96).

Every function takes counts or values and a normal quantile ``z`` (default two-sided 95%)
and returns plain floats; NaN where the data cannot define the number. Pure Python and
NumPy.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

__all__ = [
    "Z95",
    "mean_interval",
    "newcombe_difference",
    "relative_lift",
    "two_sided_z",
    "wilson_interval",
]

# Two-sided 95 % normal quantile.
Z95 = 1.959963984540054


def two_sided_z(level: float) -> float:
    """Two-sided normal quantile: ``level`` 0.95 -> 1.96."""
    if isinstance(level, bool) or not isinstance(level, int | float):
        raise TypeError(f"level must be a number in (0, 1), got {type(level).__name__}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (n = 0: (0, 1))."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def newcombe_difference(
    k1: int, n1: int, k0: int, n0: int, z: float = Z95
) -> tuple[float, float, float]:
    """p1 - p0 with Newcombe's hybrid score interval (method 10): (diff, low, high)."""
    if n1 == 0 or n0 == 0:
        return math.nan, math.nan, math.nan
    p1, p0 = k1 / n1, k0 / n0
    l1, u1 = wilson_interval(k1, n1, z)
    l0, u0 = wilson_interval(k0, n0, z)
    d = p1 - p0
    low = d - math.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return d, low, high


def relative_lift(k1: int, n1: int, k0: int, n0: int, z: float = Z95) -> tuple[float, float, float]:
    """p1 / p0 - 1 with the log rate-ratio (Katz) interval: (lift, low, high).

    When either count is 0, 0.5 is added to both counts and both sizes (the usual
    continuity correction), so the ratio is always defined; NaN only for an empty arm.
    """
    if n1 == 0 or n0 == 0:
        return math.nan, math.nan, math.nan
    a, b = float(k1), float(k0)
    if a == 0 or b == 0:
        a, b = a + 0.5, b + 0.5
        n1, n0 = n1 + 0.5, n0 + 0.5
    ratio = (a / n1) / (b / n0)
    se = math.sqrt(max(0.0, 1 / a - 1 / n1 + 1 / b - 1 / n0))
    log_r = math.log(ratio)
    return ratio - 1.0, math.exp(log_r - z * se) - 1.0, math.exp(log_r + z * se) - 1.0


def mean_interval(values: np.ndarray, z: float = Z95) -> tuple[float, float, float]:
    """Mean with a normal-approximation interval: (mean, low, high). values: float64[n]."""
    n = values.shape[0]
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n == 1:
        return mean, math.nan, math.nan
    half = z * float(values.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half
