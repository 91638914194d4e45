"""Intervention scoring throughput: the batch endpoint against one decision per request.

    python -m benchmarks.interventions [--url URL] [--units 5000] [--repeats 7]
                                       [--concurrency 32] [--use-case interventions]
                                       [--json PATH]

Without ``--url`` it starts ``nudgeserve run`` (default config) on a free loopback port
with a temporary state directory, and stops it at the end. Units are held-out Hillstrom
customers (the test split). Rows, each a median over ``--repeats`` runs of ``--units``
units:

- ``engine``: ``InterventionEngine.decide`` + ``results()`` in this process (no HTTP, no
  log, budget not spent): the floor the endpoints build on;
- ``POST /v1/decide/batch`` with ``dry_run`` (scored, not logged, no budget);
- ``POST /v1/decide/batch`` (decisions logged, daily caps spent: what a campaign send
  does);
- baseline: the same units as one ``POST /v1/decide`` each, ``--concurrency`` in flight
  over keep-alive connections (live traffic).

Ratios are units/s over the baseline's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _units(n: int) -> list[dict]:
    from nudgeserve.commands.replay import _contexts, _customers

    test, rows = _customers(n, seed=0)
    return [
        {"unit_id": f"bench-{int(r)}", "context": ctx}
        for r, ctx in zip(rows.tolist(), _contexts(test), strict=True)
    ]


def _start_server(state_dir: Path) -> tuple[subprocess.Popen, str]:
    from nudgeserve.serve.ray.local import free_port, wait_ready

    port = free_port()
    env = dict(os.environ)
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(name, None)
    log = open(state_dir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nudgeserve.cli",
            "run",
            "--port",
            str(port),
            "--state-dir",
            str(state_dir / "state"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log.name}")
        try:
            wait_ready(url, 5)
            return proc, url
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _median_units_per_s(fn, n_units: int, repeats: int) -> tuple[float, float]:
    fn()  # warm: first-call costs, connections
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return n_units / median, median


def main(argv: list[str] | None = None) -> int:
    import msgspec
    import numpy as np

    from nudgeserve.commands.replay import HttpClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--units", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--use-case", default="interventions")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    units = _units(args.units)
    n = len(units)
    encode = msgspec.json.Encoder().encode
    decode = msgspec.json.Decoder().decode
    rows = []

    # In-process engine: the same ensemble, rule and featurizer the server loads.
    from nudgeserve.serve.config import default_config
    from nudgeserve.serve.engine.usecases import build_engine

    settings = default_config().use_case(args.use_case)
    engine = build_engine(settings)
    engine.load(device="cpu", warm=True)
    inter = engine.interventions
    fields = inter.field_names
    columns = {f: [u["context"][f] for u in units] for f in fields}
    ids = np.asarray([u["unit_id"] for u in units])

    def in_process() -> None:
        msgspec.json.encode(inter.decide(columns, ids, spend_budget=False).results())

    ups, med = _median_units_per_s(in_process, n, args.repeats)
    rows.append({"case": "engine (in process, no HTTP)", "units_per_s": ups, "median_s": med})

    tmp = None
    proc = None
    url = args.url
    if url is None:
        tmp = Path(tempfile.mkdtemp(prefix="nudgeserve-bench-"))
        proc, url = _start_server(tmp)
    try:
        client = HttpClient(url, 120)

        def batch(dry_run: bool):
            body = encode({"use_case": args.use_case, "units": units, "dry_run": dry_run})

            def call() -> None:
                status, raw = client.request("POST", "/v1/decide/batch", body)
                if status != 200:
                    raise RuntimeError(f"/v1/decide/batch answered {status}: {raw[:300]!r}")
                if len(decode(raw)["results"]) != n:
                    raise RuntimeError("wrong number of results")

            return call

        ups, med = _median_units_per_s(batch(True), n, args.repeats)
        rows.append({"case": "POST /v1/decide/batch dry_run", "units_per_s": ups, "median_s": med})
        ups, med = _median_units_per_s(batch(False), n, args.repeats)
        rows.append({"case": "POST /v1/decide/batch (logged)", "units_per_s": ups, "median_s": med})
        bodies = [
            encode({"use_case": args.use_case, "context": u["context"], "unit_id": u["unit_id"]})
            for u in units
        ]

        def one(body: bytes) -> None:
            status, raw = client.request("POST", "/v1/decide", body)
            if status != 200:
                raise RuntimeError(f"/v1/decide answered {status}: {raw[:300]!r}")

        pool = ThreadPoolExecutor(args.concurrency)

        def singles() -> None:
            list(pool.map(one, bodies))

        ups, med = _median_units_per_s(singles, n, max(3, args.repeats // 2))
        pool.shutdown()
        rows.append(
            {
                "case": f"baseline: POST /v1/decide x{n}, {args.concurrency} in flight",
                "units_per_s": ups,
                "median_s": med,
                "baseline": True,
            }
        )
    finally:
        if proc is not None:
            _stop_server(proc)
    base = next(r["units_per_s"] for r in rows if r.get("baseline"))
    print(f"{n} held-out Hillstrom customers per run, median of {args.repeats} runs")
    print(f"{'case':<52} {'units/s':>12} {'median s':>10} {'x baseline':>11}")
    for r in rows:
        r["ratio_vs_baseline"] = r["units_per_s"] / base
        print(
            f"{r['case']:<52} {r['units_per_s']:>12,.0f} {r['median_s']:>10.3f} "
            f"{r['ratio_vs_baseline']:>11.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"units": n, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
