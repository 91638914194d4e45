"""Kernel micro-benchmarks: our Cython/Numba kernels against their baselines, one run.

    python -m benchmarks.kernels [--json PATH] [--only SUBSTRING] [--threads 1,2]

For each op and shape, every case (ours and the baselines: np.argpartition+sort,
torch.topk, scikit-learn's FeatureHasher, pure-Python loops) is timed in this process,
single-threaded and with all cores; the table shows medians and the ratio
(fastest baseline median / case median: above 1 means faster than every baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from benchmarks import _cases_hashing, _cases_topk
from benchmarks._timing import Case, time_callable

CASE_MODULES = (_cases_topk, _cases_hashing)


def set_threads(n: int) -> None:
    """Cap threads for our kernels, Numba and torch alike."""
    import torch

    from nudgeserve import kernels

    kernels.set_num_threads(n)
    torch.set_num_threads(n)


def run_cases(cases: list[Case], threads: int) -> list[dict]:
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
                "median_s": time_callable(case.fn),
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
    print(f"\n{'threads':>7}  {'group':<44} {'case':<28} {'median':>12} {'ratio':>8}")
    for r in rows:
        ratio = f"{r['ratio_vs_best_baseline']:.2f}x" if r["ratio_vs_best_baseline"] else "-"
        tag = " (baseline)" if r["baseline"] else ""
        med = r["median_s"]
        med_s = f"{med * 1e3:.3f}ms" if med >= 1e-3 else f"{med * 1e6:.1f}us"
        print(f"{r['threads']:>7}  {r['group']:<44} {(r['name'] + tag):<28} {med_s:>12} {ratio:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", dest="json_path", help="also write the figures as JSON here")
    parser.add_argument("--only", default="", help="run only groups containing this text")
    parser.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)"
    )
    args = parser.parse_args(argv)
    all_cores = os.cpu_count() or 1
    threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, all_cores})

    from nudgeserve import kernels

    kernels.warmup()
    cases = [c for m in CASE_MODULES for c in m.cases() if args.only in c.group]
    rows = []
    for n in threads:
        rows += run_cases(cases, n)
    print(f"kernel backends chosen at import: {kernels.chosen_backends()}")
    print_table(rows)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "machine": {
                        "cpus": all_cores,
                        "processor": platform.machine(),
                        "python": platform.python_version(),
                    },
                    "rows": rows,
                },
                f,
                indent=2,
            )
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
