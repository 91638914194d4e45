"""Shared timing for every benchmark: medians over repeated samples, ratios in one run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
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


def set_threads(n: int) -> None:
    """Cap threads for our kernels, Numba and torch alike."""
    import torch

    from nudgeserve import kernels

    kernels.set_num_threads(n)
    torch.set_num_threads(n)


def run_cases(cases: list[Case], threads: int, max_total_s: float = 3.0) -> list[dict]:
    """Time every case with ``threads`` threads; one row per case, with its ratio.

    Each row: group, name, baseline, threads, median_s, and ratio_vs_best_baseline (the
    fastest baseline median of the group / this median; None when the group has none).
    max_total_s: the time budget per case (``time_callable``).
    """
    set_threads(threads)
    rows = []
    for i, case in enumerate(cases, 1):
        print(
            f"  [{threads} thread(s)] {i}/{len(cases)} {case.group} :: {case.name}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(
            {
                "group": case.group,
                "name": case.name,
                "baseline": case.baseline,
                "threads": threads,
                "median_s": time_callable(case.fn, max_total_s=max_total_s),
            }
        )
    best_baseline: dict[str, float] = {}
    for r in rows:
        if r["baseline"]:
            g = r["group"]
            best_baseline[g] = min(best_baseline.get(g, float("inf")), r["median_s"])
    for r in rows:
        b = best_baseline.get(r["group"])
        r["ratio_vs_best_baseline"] = (b / r["median_s"]) if b else None
    return rows


def print_table(rows: list[dict]) -> None:
    """Rows of ``run_cases`` as a table (columns widen to the longest group and case)."""
    group_w = max([44, *(len(r["group"]) for r in rows)])
    case_w = max([28, *(len(r["name"]) + len(" (baseline)") * r["baseline"] for r in rows)])
    print(f"\n{'threads':>7}  {'group':<{group_w}} {'case':<{case_w}} {'median':>12} {'ratio':>8}")
    for r in rows:
        ratio = f"{r['ratio_vs_best_baseline']:.2f}x" if r["ratio_vs_best_baseline"] else "-"
        tag = " (baseline)" if r["baseline"] else ""
        med = r["median_s"]
        med_s = f"{med * 1e3:.3f}ms" if med >= 1e-3 else f"{med * 1e6:.1f}us"
        print(
            f"{r['threads']:>7}  {r['group']:<{group_w}} {(r['name'] + tag):<{case_w}} "
            f"{med_s:>12} {ratio:>8}"
        )


def case_arguments(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options every case benchmark takes: ``--json PATH``, ``--only``, ``--threads``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", dest="json_path", help="also write the figures as JSON here")
    parser.add_argument("--only", default="", help="run only groups containing this text")
    parser.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)"
    )
    return parser


def thread_counts(text: str | None) -> list[int]:
    """``--threads`` as a list; by default 1 and every core (one entry when they agree)."""
    if text:
        return [int(t) for t in text.split(",")]
    return sorted({1, os.cpu_count() or 1})


def write_rows_json(path: str, rows: list[dict]) -> None:
    """``rows`` of ``run_cases`` with a description of this machine, as JSON."""
    with open(path, "w") as f:
        json.dump(
            {
                "machine": {
                    "cpus": os.cpu_count() or 1,
                    "processor": platform.machine(),
                    "python": platform.python_version(),
                },
                "rows": rows,
            },
            f,
            indent=2,
        )
