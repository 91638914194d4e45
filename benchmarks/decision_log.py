"""Decision-log benchmark: durable write throughput and the latency logging adds.

    python -m benchmarks.decision_log [--records 20000] [--samples 5] [--json PATH]
        [--synchronous NORMAL,FULL] [--clients 32] [--rate 2000] [--dir DIR]

1. Throughput, decisions/s committed to SQLite (WAL) with the shared OBD-shaped records
   (80 candidates, 3 slots, 84 features), for each ``synchronous`` setting. Each case
   writes its decisions into a fresh file and stops the clock when they are committed
   (``flush`` returned, or every commit-durability ``append`` returned):
   - baselines, one commit per decision: a plain ``sqlite3`` loop (INSERT + COMMIT), and
     ``DecisionLog`` with ``max_batch=1``;
   - group commit: ``DecisionLog`` in ``enqueue`` durability (one producer), and in
     ``commit`` durability with ``--clients`` asyncio tasks on one loop (how a replica
     calls it) or ``--clients`` threads.
   Median over ``--samples`` runs; ratio = case rate / best baseline rate (same run).
2. Latency of a simulated ``/v1/decide`` handler on one asyncio loop, open loop: requests
   arrive at ``--rate`` per second, each does a top-3 over 80 scores and then (or not)
   ``await log.append_async(record)``. p50/p99 from each request's due time, without
   logging, with ``enqueue`` and with ``commit`` durability, in the same run; "extra" is
   the difference to the run without logging. This is the log's own cost in-process;
   the end-to-end figure through HTTP and Ray Serve belongs to the server's load test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

import msgspec
import numpy as np

from nudgeserve.serve.decisions import DecisionLog
from nudgeserve.serve.decisions._sample import sample_decisions
from nudgeserve.serve.decisions._schema import INSERT_DECISION, connect, migrate
from nudgeserve.serve.decisions._store import decision_row


def _fresh(tmp: str, name: str) -> str:
    path = os.path.join(tmp, name)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return path


def sqlite_commit_each(path: str, records: list, synchronous: str) -> float:
    """Baseline: the simplest durable logger, one transaction per decision."""
    conn = connect(path, synchronous)
    migrate(conn)
    t0 = time.perf_counter()
    for rec in records:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(INSERT_DECISION, decision_row(rec))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def log_enqueue(path: str, records: list, synchronous: str, max_batch: int) -> float:
    log = DecisionLog(path, durability="enqueue", synchronous=synchronous, max_batch=max_batch)
    t0 = time.perf_counter()
    for rec in records:
        log.append(rec)
    log.flush()
    elapsed = time.perf_counter() - t0
    log.close()
    return elapsed


def log_commit_threads(path: str, records: list, synchronous: str, clients: int) -> float:
    log = DecisionLog(path, durability="commit", synchronous=synchronous)
    parts = [records[i::clients] for i in range(clients)]
    start = threading.Barrier(clients + 1)

    def client(part: list) -> None:
        start.wait()
        for rec in part:
            log.append(rec)

    threads = [threading.Thread(target=client, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    log.close()
    return elapsed


def log_commit_asyncio(path: str, records: list, synchronous: str, clients: int) -> float:
    """Commit durability as a replica uses it: one event loop, ``clients`` tasks."""
    log = DecisionLog(path, durability="commit", synchronous=synchronous)

    async def run() -> float:
        it = iter(records)

        async def client() -> None:
            for rec in it:
                await log.append_async(rec)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(run())
    log.close()
    return elapsed


def throughput(
    records: list,
    synchronous: str,
    samples: int,
    clients: int,
    baseline_records: int,
    directory: str | None,
) -> list[dict]:
    cases = [
        (
            "sqlite3 loop, commit per decision",
            True,
            baseline_records,
            lambda p, r: sqlite_commit_each(p, r, synchronous),
        ),
        (
            "DecisionLog max_batch=1 (commit per decision)",
            True,
            baseline_records,
            lambda p, r: log_enqueue(p, r, synchronous, 1),
        ),
        (
            "DecisionLog group commit, enqueue",
            False,
            len(records),
            lambda p, r: log_enqueue(p, r, synchronous, 1024),
        ),
        (
            f"DecisionLog group commit, commit, {clients} asyncio tasks",
            False,
            len(records),
            lambda p, r: log_commit_asyncio(p, r, synchronous, clients),
        ),
        (
            f"DecisionLog group commit, commit, {clients} threads",
            False,
            len(records),
            lambda p, r: log_commit_threads(p, r, synchronous, clients),
        ),
    ]
    rows = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for name, baseline, n, fn in cases:
            rates = []
            for s in range(samples):
                print(
                    f"  [{synchronous}] {name}: sample {s + 1}/{samples}",
                    file=sys.stderr,
                    flush=True,
                )
                path = _fresh(tmp, "bench.db")
                rates.append(n / fn(path, records[:n]))
            rows.append(
                {
                    "synchronous": synchronous,
                    "case": name,
                    "baseline": baseline,
                    "records": n,
                    "median_per_s": statistics.median(rates),
                    "samples_per_s": rates,
                }
            )
    best = max(r["median_per_s"] for r in rows if r["baseline"])
    for r in rows:
        r["ratio_vs_best_baseline"] = r["median_per_s"] / best
    return rows


async def _open_loop(log: DecisionLog | None, records: list, rate: float) -> list[float]:
    """Per-request latencies (s) of simulated decide handlers arriving at ``rate``/s.

    Open loop: request ``i`` is due at ``i / rate`` s whether or not earlier ones are done,
    and its latency counts from that due time (so a stalled loop shows up in the figures
    instead of silently slowing the arrivals).
    """
    scores = np.random.default_rng(0).random((len(records), 80))
    latencies = [0.0] * len(records)

    async def handle(i: int, due: float) -> None:
        await asyncio.sleep(0)  # the request comes in through the loop
        top = np.argpartition(scores[i], -3)[-3:]
        rec = records[i]
        rec = msgspec.structs.replace(rec, actions=[rec.candidates[j] for j in top])
        if log is not None:
            await log.append_async(rec)
        latencies[i] = time.perf_counter() - due

    tasks = []
    t0 = time.perf_counter()
    i = 0
    while i < len(records):
        arrived = min(len(records), int((time.perf_counter() - t0) * rate) + 1)
        while i < arrived:
            tasks.append(asyncio.create_task(handle(i, t0 + i / rate)))
            i += 1
        await asyncio.sleep(0.0002)
    await asyncio.gather(*tasks)
    return latencies


def latency(records: list, synchronous: str, rate: float, directory: str | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        for mode in (None, "enqueue", "commit"):
            print(
                f"  [{synchronous}] latency at {rate:.0f} req/s, logging={mode or 'off'}",
                file=sys.stderr,
                flush=True,
            )
            log = None
            if mode is not None:
                log = DecisionLog(_fresh(tmp, "lat.db"), durability=mode, synchronous=synchronous)
            asyncio.run(_open_loop(log, records[:200], rate))  # warm-up
            lat = np.array(asyncio.run(_open_loop(log, records, rate)))
            if log is not None:
                log.close()
            rows.append(
                {
                    "synchronous": synchronous,
                    "logging": mode or "off",
                    "rate_per_s": rate,
                    "requests": len(records),
                    "p50_s": float(np.percentile(lat, 50)),
                    "p99_s": float(np.percentile(lat, 99)),
                }
            )
    off = rows[0]
    for r in rows:
        r["extra_p50_s"] = r["p50_s"] - off["p50_s"]
        r["extra_p99_s"] = r["p99_s"] - off["p99_s"]
    return rows


def _fs_type(path: str) -> str:
    """The file system holding ``path`` (Linux), since fsync cost depends on it."""
    best, fstype = "", "unknown file system"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if os.path.realpath(path).startswith(mount) and len(mount) > len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def _us(s: float) -> str:
    return f"{s * 1e3:.2f}ms" if abs(s) >= 1e-3 else f"{s * 1e6:.0f}us"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decision_log",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument(
        "--baseline-records",
        type=int,
        default=None,
        help="decisions per one-commit-each baseline run "
        "(default: --records for NORMAL, 2000 for FULL)",
    )
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument(
        "--clients",
        type=int,
        default=32,
        help="concurrent writers in the commit-durability throughput cases",
    )
    parser.add_argument(
        "--rate", type=float, default=2000.0, help="requests/s offered in the latency runs"
    )
    parser.add_argument("--latency-requests", type=int, default=6000)
    parser.add_argument("--synchronous", default="NORMAL,FULL")
    parser.add_argument(
        "--dir",
        default=None,
        help="directory for the database files (default: the system temp "
        "dir; fsync costs depend on its file system)",
    )
    parser.add_argument("--json", dest="json_path", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.records < 1000 or args.clients < 1:
        parser.error("--samples and --clients must be >= 1, --records >= 1000")
    if args.rate <= 0 or args.latency_requests < 100:
        parser.error("--rate must be > 0 and --latency-requests >= 100")
    syncs = [s.strip().upper() for s in args.synchronous.split(",")]
    for s in syncs:
        if s not in ("NORMAL", "FULL"):
            parser.error(f"--synchronous: {s!r} is not NORMAL or FULL")

    records = sample_decisions(
        max(args.records, args.latency_requests), seed=0, start_time=time.time()
    )
    load_before = os.getloadavg()
    through, lat = [], []
    for s in syncs:
        base_n = args.baseline_records or (args.records if s == "NORMAL" else 2000)
        through += throughput(
            records, s, args.samples, args.clients, min(base_n, args.records), args.dir
        )
        lat += latency(records[: args.latency_requests], s, args.rate, args.dir)

    where = args.dir or tempfile.gettempdir()
    print(
        f"\ndatabase files in {where} ({_fs_type(where)}); "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, records of "
        f"{len(decision_row(records[0])[-1])} bytes; load average before/after "
        f"{load_before[0]:.1f}/{os.getloadavg()[0]:.1f} (other processes skew the figures)"
    )
    print(f"\n{'sync':<7} {'case':<62} {'records':>8} {'decisions/s':>12} {'ratio':>8}")
    for r in through:
        tag = " (baseline)" if r["baseline"] else ""
        print(
            f"{r['synchronous']:<7} {(r['case'] + tag):<62} {r['records']:>8} "
            f"{r['median_per_s']:>12,.0f} {r['ratio_vs_best_baseline']:>7.1f}x"
        )
    print(
        f"\n{'sync':<7} {'logging':<9} {'req/s':>7} {'p50':>9} {'p99':>9} "
        f"{'extra p50':>10} {'extra p99':>10}"
    )
    for r in lat:
        print(
            f"{r['synchronous']:<7} {r['logging']:<9} {r['rate_per_s']:>7.0f} "
            f"{_us(r['p50_s']):>9} {_us(r['p99_s']):>9} {_us(r['extra_p50_s']):>10} "
            f"{_us(r['extra_p99_s']):>10}"
        )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {
                    "machine": {
                        "cpus": os.cpu_count(),
                        "python": platform.python_version(),
                        "sqlite": sqlite3.sqlite_version,
                        "file_system": _fs_type(where),
                        "load_average_before": load_before[0],
                    },
                    "throughput": through,
                    "latency": lat,
                },
                f,
                indent=2,
            )
        print(f"\nwrote {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
