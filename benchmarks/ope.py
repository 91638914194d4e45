"""Off-policy evaluation benchmarks: our fused bootstrap against its baselines, one run.

    python -m benchmarks.ope [--json PATH] [--threads 1,2] [--only SUBSTRING]

Cases (data from the shared synthetic generator, ``nudgeserve.models._ope_synthetic``):

- bootstrap sums: the compiled Poisson-bootstrap kernel vs its NumPy reference (count
  matrix then matmul), the same numbers.
- six estimators with 95% intervals on an OBD-sized log (10k rows, 80 items, 3 slots):
  ``ope.evaluate`` vs the per-replicate resampling loop obp uses (one Python loop of
  ``rng.choice`` + mean per estimator and replicate, on precomputed per-row terms).

ratio = fastest baseline median / case median (above 1: faster than every baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

from benchmarks._timing import Case, time_callable


def _obd_sized(n: int = 10_000, n_items: int = 80, n_positions: int = 3, seed: int = 0):
    from nudgeserve.models._ope_synthetic import make_synthetic_bandit

    bandit = make_synthetic_bandit(
        n_contexts=50, n_actions=n_items, n_positions=n_positions, logging_floor=1.0, seed=seed
    )
    logs = bandit.sample(n, seed=seed + 1)
    dist = logs.per_row(bandit.softmax_policy(0.05))
    q = logs.per_row(bandit.biased_reward_model(0.01))
    return logs, dist, q


def _resampling_loop(logs, dist, q, n_bootstrap: int, seed: int = 0) -> dict:
    """obp-style: per-row terms, then per estimator a Python loop over replicates."""
    rows = np.arange(len(logs))
    pi = dist[rows, :, logs.positions]
    qr = q[rows, :, logs.positions]
    w = pi[rows, logs.actions] / logs.propensities
    r = logs.rewards
    dm = (pi * qr).sum(axis=1)
    res = w * (r - qr[rows, logs.actions])
    per_row = {
        "ips": w * r,
        "clipped_ips": np.minimum(w, 20.0) * r,
        "snips": w * r / w.mean(),
        "dm": dm,
        "dr": dm + res,
        "sndr": dm + res / w.mean(),
    }
    rng = np.random.default_rng(seed)
    n = len(logs)
    out = {}
    for name, x in per_row.items():
        boot = [x[rng.choice(n, size=n, replace=True)].mean() for _ in range(n_bootstrap)]
        out[name] = (x.mean(), *np.percentile(boot, [2.5, 97.5]))
    return out


def cases() -> list[Case]:
    from nudgeserve.models import ope

    out = []
    for n, b in ((10_000, 1000), (100_000, 500)):
        rng = np.random.default_rng(n)
        keys = np.arange(n, dtype=np.uint64)
        stats = rng.random((n, 12))
        group = f"bootstrap sums float64[{n},12] x {b} replicates"
        out.append(
            Case(group, "numba fused", lambda k=keys, s=stats, b=b: ope.bootstrap_sums(k, s, b, 0))
        )
        out.append(
            Case(
                group,
                "numpy counts@stats",
                lambda k=keys, s=stats, b=b: ope._bootstrap_sums_reference(k, s, b, 0),
                baseline=True,
            )
        )
    logs, dist, q = _obd_sized()
    group = "6 estimators + 95% CI, n=10000 A=80 P=3, 1000 replicates"
    out.append(
        Case(
            group,
            "ope.evaluate",
            lambda: ope.evaluate(
                logs.actions,
                logs.rewards,
                logs.propensities,
                dist,
                positions=logs.positions,
                reward_hat=q,
                n_bootstrap=1000,
            ),
        )
    )
    out.append(
        Case(
            group,
            "resampling loop (obp-style)",
            lambda: _resampling_loop(logs, dist, q, 1000),
            baseline=True,
        )
    )
    return out


def run_cases(selected: list[Case], threads: int) -> list[dict]:
    from nudgeserve import kernels

    kernels.set_num_threads(threads)
    rows = []
    for i, case in enumerate(selected, 1):
        print(
            f"  [{threads} thread(s)] {i}/{len(selected)} {case.group} :: {case.name}",
            file=sys.stderr,
            flush=True,
        )
        rows.append(
            {
                "group": case.group,
                "name": case.name,
                "baseline": case.baseline,
                "threads": threads,
                "median_s": time_callable(case.fn, max_total_s=6.0),
            }
        )
    best: dict[str, float] = {}
    for r in rows:
        if r["baseline"]:
            best[r["group"]] = min(best.get(r["group"], float("inf")), r["median_s"])
    for r in rows:
        b = best.get(r["group"])
        r["ratio_vs_best_baseline"] = (b / r["median_s"]) if b else None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ope",
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
    selected = [c for c in cases() if args.only in c.group]
    rows = [r for t in threads for r in run_cases(selected, t)]
    print(f"\n{'threads':>7}  {'group':<58} {'case':<36} {'median':>11} {'ratio':>8}")
    for r in rows:
        ratio = f"{r['ratio_vs_best_baseline']:.2f}x" if r["ratio_vs_best_baseline"] else "-"
        name = r["name"] + (" (baseline)" if r["baseline"] else "")
        print(
            f"{r['threads']:>7}  {r['group']:<58} {name:<36} "
            f"{r['median_s'] * 1e3:>9.2f}ms {ratio:>8}"
        )
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(
                {"machine": platform.platform(), "cpus": all_cores, "rows": rows}, fh, indent=2
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
