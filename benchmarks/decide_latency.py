"""What the decision loop costs ``/v1/decide``: latency and throughput with and without the
decision log, in one run; and the decision log's own durable write rate.

    python -m benchmarks.decide_latency [--duration 8] [--warmup 2] [--concurrency 16]
        [--rate-fraction 0.5] [--records 20000] [--samples 3] [--repeats 1] [--json PATH]

1. The server, twice: ``nudgeserve run`` on a free port with the same config (both use
   cases, colocated, throughput-optimized ingress, no experiments), once with
   ``decision_log.enabled: false`` and once with the default log (SQLite WAL, ``commit``
   durability: an answer waits for the group commit that holds its decision). Each is
   started, driven and stopped before the next (``--repeats`` alternates them again), so
   they never share the CPU. Requests: OBD ``POST /v1/decide`` with a real context
   (affinities, k = 3), sent by the project's keep-alive load client
   (``benchmarks/_load_client.py``):
   - closed loop, ``--concurrency`` connections back to back: throughput and latency at
     saturation;
   - open loop (Poisson arrivals, latency from the scheduled send time) at the same rate
     for both servers, ``--rate-fraction`` of the closed-loop throughput without logging:
     the extra latency logging adds at equal load.
   After the logged run, the decisions in its SQLite file are counted: each answer must
   be there.
2. The decision log alone: ``benchmarks.decision_log.throughput`` (decisions/s committed,
   group commit against one-commit-per-decision baselines; medians of ``--samples``),
   reused here so both figures come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._load_client import HttpTarget, closed_loop, open_loop, request_once
from benchmarks._load_systems import ManagedServer, free_port
from benchmarks.decision_log import throughput
from benchmarks.ingress import _obd_bodies

ROOT = Path(__file__).resolve().parent.parent


def _config(workdir: Path, logging: bool) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    args = raw["applications"][0]["args"]
    # The bandit variants learn from the log; without it they cannot run. The same
    # experiment-free config for both servers keeps the comparison about the log alone.
    args["experiments"] = []
    args["decision_log"]["enabled"] = logging
    args["state_dir"] = str(workdir / ("state-logged" if logging else "state-unlogged"))
    path = workdir / f"config-{'logged' if logging else 'unlogged'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _count_logged(db: Path) -> int:
    from nudgeserve.serve.decisions import read_decisions

    return len(read_decisions(db).records)


def measure(
    logging: bool, workdir: Path, body: bytes, args: argparse.Namespace, rate: float | None
) -> dict:
    """Start the server, drive it closed then open loop, stop it; the figures."""
    port = free_port()
    config = _config(workdir, logging)
    name = "logged" if logging else "unlogged"
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    server = ManagedServer(
        name,
        [
            sys.executable,
            "-m",
            "nudgeserve.cli",
            "run",
            "--config",
            str(config),
            "--port",
            str(port),
            "--ray-temp-dir",
            str(ROOT / ".ray" / "bdl"),
        ],
        f"http://127.0.0.1:{port}",
        workdir / f"server-{name}.log",
        env=env,
        cwd=ROOT,
    )
    target = HttpTarget("127.0.0.1", port, "/v1/decide", [body])
    print(f"  starting the server ({name})", file=sys.stderr, flush=True)
    with server:
        status, answer = request_once(target)
        if status != 200:
            raise RuntimeError(f"{name}: /v1/decide answered {status}: {answer[:300]!r}")
        print(f"  closed loop ({name})", file=sys.stderr, flush=True)
        closed = closed_loop(target, args.concurrency, args.duration, args.warmup)
        if rate is None:
            rate = args.rate_fraction * closed.throughput_rps
        print(f"  open loop at {rate:.0f}/s ({name})", file=sys.stderr, flush=True)
        opened = open_loop(target, rate, args.duration, args.warmup, seed=1)
    row = {
        "logging": name,
        "closed": closed.as_dict(),
        "open": opened.as_dict(),
        "open_rate": rate,
    }
    if logging:
        db = workdir / "state-logged" / "decisions.sqlite"
        row["decisions_logged"] = _count_logged(db)
        answered = 1 + sum(r.ok for r in (closed, opened))  # requests before the windows too
        row["answered_in_windows"] = answered
    return row


def _ms(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:7.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decide_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop connections")
    parser.add_argument(
        "--rate-fraction",
        type=float,
        default=0.5,
        help="open-loop rate as a fraction of the unlogged closed-loop throughput",
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternations of the pair")
    parser.add_argument("--records", type=int, default=20_000, help="decision-log benchmark")
    parser.add_argument("--samples", type=int, default=3, help="decision-log benchmark")
    parser.add_argument("--clients", type=int, default=32, help="decision-log benchmark")
    parser.add_argument("--json", dest="json_path", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.repeats < 1:
        parser.error("--duration > 0, --warmup >= 0, --concurrency and --repeats >= 1")
    if not 0 < args.rate_fraction <= 1:
        parser.error("--rate-fraction must be in (0, 1]")

    body, _ = _obd_bodies()["/v1/decide"]
    load_before = os.getloadavg()
    runs = []
    rate = None
    with tempfile.TemporaryDirectory(prefix="nudgeserve-bench-") as tmp:
        for repeat in range(args.repeats):
            for logging in (False, True):
                workdir = Path(tmp) / f"r{repeat}"
                workdir.mkdir(exist_ok=True)
                row = measure(logging, workdir, body, args, rate)
                rate = row["open_rate"]  # the same offered load for every run
                row["repeat"] = repeat
                runs.append(row)

    from nudgeserve.serve.decisions._sample import sample_decisions

    print("  decision log alone (benchmarks.decision_log)", file=sys.stderr, flush=True)
    records = sample_decisions(args.records, seed=0, start_time=time.time())
    log_rows = throughput(records, "NORMAL", args.samples, args.clients, args.records, None)

    def median(name: str, mode: str, key: str) -> float | None:
        values = [r[mode][key] for r in runs if r["logging"] == name and r[mode][key] is not None]
        return statistics.median(values) if values else None

    print(
        f"\n/v1/decide (OBD, k=3, real context), {os.cpu_count()} CPUs; load average "
        f"before/after {load_before[0]:.1f}/{os.getloadavg()[0]:.1f}; medians of "
        f"{args.repeats} run(s)"
    )
    print(f"{'loop':<28} {'logging':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    table = {}
    for mode, label in (
        ("closed", f"closed, {args.concurrency} connections"),
        ("open", f"open, {rate:.0f} req/s offered"),
    ):
        for name in ("unlogged", "logged"):
            rps = median(name, mode, "throughput_rps")
            p50, p99 = median(name, mode, "p50_ms"), median(name, mode, "p99_ms")
            table[(mode, name)] = (rps, p50, p99)
            print(f"{label:<28} {name:<9} {rps:>8.0f} {_ms(p50):>8} {_ms(p99):>8}")
    for mode in ("closed", "open"):
        (r0, a50, a99), (r1, b50, b99) = table[(mode, "unlogged")], table[(mode, "logged")]
        print(
            f"{mode}: logging adds {b50 - a50:+.2f} ms at p50, {b99 - a99:+.2f} ms at p99; "
            f"throughput ratio logged/unlogged {r1 / r0:.2f}"
        )
    for r in runs:
        if r["logging"] == "logged":
            print(
                f"logged run {r['repeat']}: {r['decisions_logged']} decisions in the SQLite "
                f"file (answered, windows only: {r['answered_in_windows']})"
            )
    print(f"\n{'decision log alone':<62} {'records':>8} {'decisions/s':>12} {'ratio':>8}")
    for r in log_rows:
        tag = " (baseline)" if r["baseline"] else ""
        print(
            f"{(r['case'] + tag):<62} {r['records']:>8} {r['median_per_s']:>12,.0f} "
            f"{r['ratio_vs_best_baseline']:>7.1f}x"
        )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "cpus": os.cpu_count(),
                    "load_before": load_before[0],
                    "runs": runs,
                    "log": log_rows,
                },
                f,
                indent=2,
            )
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
