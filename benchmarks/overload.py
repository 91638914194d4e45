"""Overload: what accepted and refused requests see when the offered load is a multiple of
what the server can do, and how fast it is back to full speed when the load drops.

    python -m benchmarks.overload [--url URL] [--factor 3] [--capacity RPS]
                                  [--baseline-rate 200] [--duration 6] [--after 4]
                                  [--json PATH] [--plot PATH]

Against ``nudgeserve run`` (started here on a free port with its own state and Ray
directories, or ``--url`` of a running server), ``POST /v1/decide`` with real Open Bandit
contexts (80 candidates, k = 3), one run:

1. **unloaded**: open loop at ``--baseline-rate`` for ``--duration`` s: the p99 of accepted
   requests with the server far from its limit;
2. **capacity**: the highest rate of the sweep ``--capacity-rates`` whose open-loop point
   (``--duration`` s) kept p99 < 50 ms with no error, as ``benchmarks.load`` defines it
   (or ``--capacity``);
3. **step**: open loop (Poisson arrivals, latency from each request's scheduled send time)
   at ``--factor`` x capacity for ``--duration`` s, then at ``--baseline-rate`` for
   ``--after`` s, every request recorded (``_load_client.open_loop_trace``).

Reported, with the targets of the real-time issue: accepted requests' p99 during the
overload against the unloaded p99 (target <= 3x); refused requests: how many, their
latency (target p99 <= 5 ms), and whether each was a 503 with a JSON ``{"error": ...}``
body and ``Retry-After`` (target: all); recovery: from the drop, how long until every
later request was accepted within 3x the unloaded p99 (target <= 1 s). The PNG (next to
``--json``, or ``--plot``) shows each request's latency against its send time, accepted
and refused apart, with the offered rate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import _load_workload as wl
from benchmarks._load_client import (
    HttpTarget,
    Trace,
    open_loop,
    open_loop_trace,
    poisson_schedule,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCEPTED_P99_FACTOR = 3.0
REFUSED_P99_MS = 5.0
RECOVERY_S = 1.0
CAPACITY_RATES = (500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0)
CAPACITY_P99_MS = 50.0
# The client's dispatch lag (p99) past which the step's figures are the client's.
CLIENT_LAG_LIMIT_MS = 5.0


def log(msg: str) -> None:
    print(f"[overload] {msg}", file=sys.stderr, flush=True)


def step_schedule(high_rate: float, high_s: float, low_rate: float, low_s: float, seed: int):
    """Send offsets: Poisson at ``high_rate`` for ``high_s`` s, then ``low_rate`` for
    ``low_s`` s; and the drop time (``high_s``)."""
    high = poisson_schedule(high_rate, high_s, seed)
    low = poisson_schedule(low_rate, low_s, seed + 1) + high_s
    return np.concatenate([high, low]), high_s


def _p(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if len(values) else math.nan


def analyse(trace: Trace, drop_s: float, unloaded_p99_ms: float, warmup_s: float = 0.5) -> dict:
    """The step's figures (module docstring). ``warmup_s``: the first part of the overload
    left out of its percentiles (the queue filling up)."""
    t, lat, status = trace.scheduled_s, trace.latency_s, trace.status
    over = (t >= warmup_s) & (t < drop_s)
    ok = status == 200
    refused = (status >= 500) | (status == 429)
    acc = lat[over & ok]
    ref = over & refused
    limit_s = ACCEPTED_P99_FACTOR * unloaded_p99_ms / 1e3
    # Recovery: the earliest time after the drop from which every request was accepted
    # within the limit.
    after = t >= drop_s
    bad = after & (~ok | (lat > limit_s))
    last_bad = float(t[bad].max()) if bad.any() else None
    recovery_s = 0.0 if last_bad is None else last_bad - drop_s
    n_over = int(np.count_nonzero(over))
    return {
        "offered_overload": n_over,
        "accepted": int(len(acc)),
        "accepted_p50_ms": _p(acc, 50),
        "accepted_p99_ms": _p(acc, 99),
        "accepted_p99_vs_unloaded": _p(acc, 99) / unloaded_p99_ms if len(acc) else math.nan,
        "refused": int(np.count_nonzero(ref)),
        "refused_p50_ms": _p(lat[ref], 50),
        "refused_p99_ms": _p(lat[ref], 99),
        "refused_json_error": int(np.count_nonzero(trace.json_error[ref])),
        "refused_retry_after": int(np.count_nonzero(trace.retry_after[ref])),
        "refused_statuses": sorted({int(s) for s in status[ref]}),
        "other_failures": int(np.count_nonzero(over & ~ok & ~refused)),
        "recovery_s": recovery_s,
        "client_lag_p99_ms": _p(trace.lag_s[over], 99),
        # The same from the client's actual send (its dispatch lag taken out): what the
        # server and the wire did, when the client could not keep its schedule.
        "accepted_p99_from_send_ms": _p(acc - trace.lag_s[over & ok], 99),
        "refused_p99_from_send_ms": _p(lat[ref] - trace.lag_s[ref], 99),
        "after_drop_requests": int(np.count_nonzero(after)),
        "after_drop_p99_ms": _p(lat[after & ok], 99),
    }


def verdicts(fig: dict, unloaded_p99_ms: float) -> list[dict]:
    out = []

    def add(name: str, met: bool | None, detail: str, timing: bool = True) -> None:
        status = "not measured" if met is None else ("met" if met else "missed")
        out.append({"target": name, "status": status, "detail": detail, "timing": timing})

    ratio = fig["accepted_p99_vs_unloaded"]
    add(
        f"accepted p99 <= {ACCEPTED_P99_FACTOR:g}x unloaded p99",
        None if math.isnan(ratio) else ratio <= ACCEPTED_P99_FACTOR,
        f"{fig['accepted_p99_ms']:.2f} ms vs {unloaded_p99_ms:.2f} ms unloaded ({ratio:.2f}x), "
        f"{fig['accepted']:,} accepted",
    )
    n = fig["refused"]
    add(
        f"refused answered within {REFUSED_P99_MS:g} ms (p99)",
        None if n == 0 else fig["refused_p99_ms"] <= REFUSED_P99_MS,
        f"{n:,} refused, p50 {fig['refused_p50_ms']:.2f} ms, p99 {fig['refused_p99_ms']:.2f} ms",
    )
    add(
        'refused: 503, JSON {"error": ...} and Retry-After, every one',
        None
        if n == 0
        else (
            fig["refused_statuses"] == [503]
            and fig["refused_json_error"] == n
            and fig["refused_retry_after"] == n
        ),
        f"statuses {fig['refused_statuses']}, JSON error {fig['refused_json_error']:,}/{n:,}, "
        f"Retry-After {fig['refused_retry_after']:,}/{n:,}",
        timing=False,
    )
    add(
        f"full speed within {RECOVERY_S:g} s of the drop",
        fig["recovery_s"] <= RECOVERY_S,
        f"{fig['recovery_s']:.2f} s (every later request accepted within "
        f"{ACCEPTED_P99_FACTOR:g}x the unloaded p99)",
    )
    if fig["client_lag_p99_ms"] > CLIENT_LAG_LIMIT_MS:
        for t in out:
            if t["status"] == "missed" and t["timing"]:
                t["status"] = "client-bound"
                t["detail"] += (
                    f" (the client dispatched p99 {fig['client_lag_p99_ms']:.1f} ms late: it, "
                    "not the server, set these figures; lower --factor or use more CPUs)"
                )
    return out


def write_plot(trace: Trace, drop_s: float, high: float, low: float, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    t, lat = trace.scheduled_s, trace.latency_s * 1e3
    ok = trace.status == 200
    finite = np.isfinite(lat)
    ax.scatter(t[ok & finite], lat[ok & finite], s=2, c="tab:blue", label="accepted (200)")
    refused = ~ok & finite
    ax.scatter(t[refused], lat[refused], s=2, c="tab:red", label="refused")
    ax.set_yscale("log")
    ax.set_xlabel("send time (s)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.axvline(drop_s, color="gray", linestyle=":", linewidth=1)
    ax.set_title(
        f"/v1/decide: {high:,.0f}/s offered until {drop_s:g} s, then {low:,.0f}/s "
        f"({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')})",
        fontsize=10,
    )
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url", default=None, help="drive this running server instead of one started here"
    )
    p.add_argument("--config", type=Path, default=None, help="config for the started server")
    p.add_argument("--factor", type=float, default=3.0, help="overload as a multiple of capacity")
    p.add_argument("--capacity", type=float, default=None, help="skip measuring it: requests/s")
    p.add_argument(
        "--capacity-rates",
        type=lambda text: [float(v) for v in text.split(",") if v.strip()],
        default=list(CAPACITY_RATES),
        help="open-loop rates tried for the capacity, increasing",
    )
    p.add_argument("--baseline-rate", type=float, default=200.0, help="unloaded rate (requests/s)")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per phase")
    p.add_argument(
        "--after", type=float, default=4.0, help="seconds at the baseline after the drop"
    )
    p.add_argument(
        "--requests", type=int, default=512, help="distinct real contexts cycled through"
    )
    p.add_argument("--json", dest="json_path", type=Path, default=None)
    p.add_argument("--plot", dest="plot_path", type=Path, default=None)
    p.add_argument("--bench-dir", type=Path, default=REPO_ROOT / ".bench")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("factor", "baseline_rate", "duration", "after"):
        if not getattr(args, name) > 0:
            build_parser().error(f"--{name.replace('_', '-')} must be > 0")
    from benchmarks.load import running, sustains

    # What ``running`` reads from a load-benchmark namespace.
    args.checkpoint = None
    args.k = 3
    args.bench_dir = args.bench_dir.resolve()
    run_dir = args.bench_dir / "runs" / f"overload-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = wl.obd_contexts(args.requests, seed=args.seed)
    bodies = wl.decide_bodies(ctx, 80, 3, seed=args.seed)
    with running("ours", args, run_dir) as base:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        target = HttpTarget(host, int(port), "/v1/decide", bodies)
        log(f"unloaded: open loop at {args.baseline_rate:g}/s for {args.duration:g} s")
        unloaded = open_loop(target, args.baseline_rate, args.duration, 1.0, seed=args.seed)
        if unloaded.errors or not math.isfinite(unloaded.p99_ms):
            raise SystemExit(f"the unloaded point failed: {unloaded.first_error}")
        log(f"  -> p50 {unloaded.p50_ms:.2f} ms, p99 {unloaded.p99_ms:.2f} ms")
        capacity = args.capacity
        if capacity is None:
            capacity = 0.0
            for rate in args.capacity_rates:
                log(f"capacity: open loop at {rate:g}/s")
                point = open_loop(target, rate, args.duration, 1.0, seed=args.seed)
                log(f"  -> p99 {point.p99_ms:.2f} ms, errors {point.errors + point.incomplete}")
                if not sustains(point, CAPACITY_P99_MS):
                    break
                capacity = rate
            if capacity == 0.0:
                raise SystemExit(f"no rate of {args.capacity_rates} kept p99 < 50 ms")
            time.sleep(2.0)  # let the last (failed) point's backlog clear
        high = args.factor * capacity
        offsets, drop_s = step_schedule(
            high, args.duration, args.baseline_rate, args.after, args.seed
        )
        log(
            f"step: {high:,.0f}/s ({args.factor:g}x) for {args.duration:g} s, then "
            f"{args.baseline_rate:g}/s for {args.after:g} s ({len(offsets):,} requests)"
        )
        trace = open_loop_trace(target, offsets)
    fig = analyse(trace, drop_s, unloaded.p99_ms)
    targets = verdicts(fig, unloaded.p99_ms)
    print(
        f"\noverload benchmark: {os.cpu_count()} CPU(s), {platform.machine()}; /v1/decide, "
        f"80 candidates, k=3"
    )
    print(
        f"unloaded ({args.baseline_rate:g}/s): p50 {unloaded.p50_ms:.2f} ms, p99 {unloaded.p99_ms:.2f} ms"
    )
    print(
        f"capacity (highest open-loop rate with p99 < {CAPACITY_P99_MS:g} ms, no errors): "
        f"{capacity:,.0f}/s"
    )
    print(
        f"overload ({high:,.0f}/s offered for {drop_s:g} s): {fig['accepted']:,} accepted, "
        f"p50 {fig['accepted_p50_ms']:.2f} ms, p99 {fig['accepted_p99_ms']:.2f} ms; "
        f"{fig['refused']:,} refused, p99 {fig['refused_p99_ms']:.2f} ms; other failures "
        f"{fig['other_failures']:,}; client dispatch lag p99 {fig['client_lag_p99_ms']:.2f} ms"
    )
    print(
        f"  from the client's actual send: accepted p99 {fig['accepted_p99_from_send_ms']:.2f} "
        f"ms, refused p99 {fig['refused_p99_from_send_ms']:.2f} ms"
    )
    print(
        f"after the drop: recovery {fig['recovery_s']:.2f} s, p99 {fig['after_drop_p99_ms']:.2f} ms"
    )
    print("\ntargets:")
    for t in targets:
        print(f"  [{t['status']}] {t['target']}: {t['detail']}")
    plot = args.plot_path or (args.json_path.with_suffix(".png") if args.json_path else None)
    if plot is not None:
        write_plot(trace, drop_s, high, args.baseline_rate, plot)
        print(f"\nwrote {plot}")
    if args.json_path:
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(
            json.dumps(
                {
                    "command": "python -m benchmarks.overload "
                    + shlex.join(argv if argv is not None else sys.argv[1:]),
                    "cpus": os.cpu_count(),
                    "unloaded": unloaded.as_dict(),
                    "capacity_rps": capacity,
                    "overload_rps": high,
                    "figures": fig,
                    "targets": targets,
                    "plot": str(plot) if plot else None,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
