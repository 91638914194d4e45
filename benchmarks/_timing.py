"""Shared timing for every benchmark: medians over repeated samples, ratios in one run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    """One timed callable.

    group: what is measured, e.g. ``"topk float32[256,1000] k=10"``; ratios compare cases
        of the same group.
    name: who does it, e.g. ``"cython"``, ``"numba"``, ``"np.argpartition+sort"``.
    fn: a zero-argument callable doing one full operation (inputs built beforehand).
    baseline: True for the reference points we compare against (NumPy, torch, sklearn,
        pure Python); ratio = fastest baseline median / this case's median.
    """

    group: str
    name: str
    fn: Callable[[], object]
    baseline: bool = False


def time_callable(
    fn: Callable[[], object],
    min_sample_s: float = 2e-3,
    samples: int = 15,
    max_total_s: float = 3.0,
) -> float:
    """Median seconds per call of ``fn``.

    Calls are grouped so that each sample lasts at least ``min_sample_s`` (timer noise),
    ``samples`` samples are taken (fewer if ``max_total_s`` would be exceeded, never
    fewer than 3), and the median sample divided by its call count is returned.
    """
    fn()  # warm caches, first-call costs
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-9)
    inner = max(1, int(min_sample_s / one))
    n = max(3, min(samples, int(max_total_s / (one * inner)) or 3))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)
