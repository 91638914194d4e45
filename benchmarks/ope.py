"""Off-policy evaluation benchmarks: our fused bootstrap against its baselines, one run.

    python -m benchmarks.ope [--json PATH] [--threads 1,2] [--only SUBSTRING]

Cases (data from the shared synthetic generator, ``nudgeserve.models.evaluation._synthetic``):

- bootstrap sums: each backend of the kernel op ``poisson_bootstrap_sums`` (the fused
  Numba kernel; the NumPy reference, count matrix then matmul, is the baseline).
- six estimators with 95% intervals on an OBD-sized log (10k rows, 80 items, 3 slots):
  ``ope.evaluate`` vs the per-replicate resampling loop obp uses (one Python loop of
  ``rng.choice`` + mean per estimator and replicate, on precomputed per-row terms).

ratio = fastest baseline median / case median (above 1: faster than every baseline).
"""

from __future__ import annotations

import numpy as np

from benchmarks._timing import (
    Case,
    case_arguments,
    print_table,
    run_cases,
    thread_counts,
    write_rows_json,
)


def _obd_sized(n: int = 10_000, n_items: int = 80, n_positions: int = 3, seed: int = 0):
    from nudgeserve.models.evaluation._synthetic import make_synthetic_bandit

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
    from nudgeserve.kernels import REGISTRY, get_num_threads
    from nudgeserve.models.evaluation import ope

    out = []
    for n, b in ((10_000, 1000), (100_000, 500)):
        rng = np.random.default_rng(n)
        keys = np.arange(n, dtype=np.uint64)
        stats = rng.random((n, 12))
        group = f"bootstrap sums float64[{n},12] x {b} replicates"
        for backend, impl in REGISTRY.implementations("poisson_bootstrap_sums").items():
            out.append(
                Case(
                    group,
                    "numba fused" if backend == "numba" else "numpy counts@stats",
                    lambda f=impl, k=keys, s=stats, b=b: f(k, s, b, 0, get_num_threads()),
                    baseline=backend == "numpy",
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


def main(argv: list[str] | None = None) -> int:
    args = case_arguments("python -m benchmarks.ope", __doc__).parse_args(argv)
    selected = [c for c in cases() if args.only in c.group]
    # The estimator cases take far longer per call than a kernel (the obp-style loop most):
    # so each case gets twice the kernels' time budget, for more samples per median.
    rows = [r for t in thread_counts(args.threads) for r in run_cases(selected, t, 6.0)]
    print_table(rows)
    if args.json_path:
        write_rows_json(args.json_path, rows)
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
