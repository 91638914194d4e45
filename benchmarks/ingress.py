"""Ray Serve ingress options on this machine: requests/s and latency per mode, one run.

    python -m benchmarks.ingress [--apps tiny,nudgeserve] [--modes proxy,direct,throughput_optimized]
                                 [--placements separate,colocated] [--duration 8]
                                 [--connections 32] [--repeats 1] [--json PATH]

Each configuration is started on a free loopback port as its own process tree (Ray
included), driven with ``wrk`` (keep-alive connections, closed loop) and stopped, one at
a time so they never compete for the CPU:

- ``tiny``: one deployment, a 16-32-1 torch MLP behind ``@serve.batch``: the cost of the
  ingress path itself;
- ``nudgeserve``: ``nudgeserve run`` with the default config, ``server.ingress`` and
  ``server.placement`` overridden; ``POST /v1/decide`` (OBD, real context, k=3) and
  ``POST /v2/models/obd_click/infer`` (JSON, batch 1).

Modes (Ray 2.60's switches, read by every Ray process): ``proxy`` (the default HTTP proxy
actor forwards to the ingress replica), ``direct`` (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``:
the ingress replica serves HTTP itself), ``throughput_optimized``
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: direct ingress, gRPC between deployments, user code
and router on the replica's main loop, buffered request logs, frozen GC). Ratios compare
each row with the ``proxy`` row of the same app, placement and route in this run.
Needs ``wrk`` on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("proxy", "direct", "throughput_optimized")


@dataclass
class Row:
    app: str
    placement: str
    route: str
    mode: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    ratio: float | None = None


def _serve_tiny(port: int) -> None:
    """Child process: a tiny batched torch deployment on ``port`` until SIGINT/SIGTERM."""
    import numpy as np
    import ray
    import torch
    from ray import serve
    from starlette.responses import Response

    from nudgeserve.serve.ray.local import default_temp_dir, free_port

    @serve.deployment(max_ongoing_requests=256)
    class Tiny:
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
            )

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
        async def score(self, rows: list[np.ndarray]) -> list[float]:
            with torch.inference_mode():
                out = self.net(torch.from_numpy(np.stack(rows))).numpy()
            return [float(v) for v in out[:, 0]]

        async def __call__(self, request) -> Response:
            if request.method == "GET":
                return Response(b"", status_code=200)
            row = np.frombuffer(await request.body(), dtype=np.float32)
            return Response(json.dumps(await self.score(row)).encode())

    direct = os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" or (
        os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1"
    )
    ray.init(
        _temp_dir=str(default_temp_dir().resolve()), include_dashboard=False, log_to_driver=False
    )
    serve.start(http_options={"host": "127.0.0.1", "port": free_port() if direct else port})
    serve.run(Tiny.bind(), route_prefix="/")
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    serve.shutdown()
    ray.shutdown()


def _env_for(mode: str, port: int) -> dict[str, str]:
    from nudgeserve.serve._env import ray_ingress_environment
    from nudgeserve.serve.ray.local import GATEWAY_PORTS, LOCAL_DRAINING_PERIOD_S

    env = dict(os.environ)
    env.update(ray_ingress_environment(mode, port, GATEWAY_PORTS))
    env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = LOCAL_DRAINING_PERIOD_S
    return env


def _start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    from nudgeserve.serve.ray.local import wait_ready

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", 240)
    except TimeoutError:
        _stop(proc)
        raise RuntimeError(f"server did not start; see {log}") from None
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wrk(
    url: str, body: bytes, content_type: str, duration: float, connections: int, workdir: Path
) -> tuple[float, float, float, int]:
    body_path = workdir / "body.bin"
    body_path.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(
        'local f = io.open("' + str(body_path) + '", "rb")\n'
        "wrk.body = f:read('*a')\nf:close()\n"
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return rps, pct("50"), pct("99"), int(non2xx.group(1)) if non2xx else 0


def _obd_bodies() -> dict[str, tuple[bytes, str]]:
    from nudgeserve.models import load_obd

    log = load_obd("random", "all")
    users = [str(u) for u in log.user_features[0]]
    affinity = [float(a) for a in log.affinity[0]]
    decide = {"use_case": "obd", "context": {"user_features": users, "affinity": affinity}, "k": 3}
    infer = {
        "inputs": [
            {"name": "user_features", "datatype": "BYTES", "shape": [1, 4], "data": users},
            {"name": "affinity", "datatype": "FP32", "shape": [1, len(affinity)], "data": affinity},
        ]
    }
    return {
        "/v1/decide": (json.dumps(decide).encode(), "application/json"),
        "/v2/models/obd_click/infer": (json.dumps(infer).encode(), "application/json"),
    }


def _config_file(workdir: Path, mode: str, placement: str) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    args = raw["applications"][0]["args"]
    args["server"]["ingress"] = mode
    args["server"]["placement"] = placement
    path = workdir / f"config-{mode}-{placement}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default="tiny,nudgeserve")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--placements", default="separate,colocated")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--serve-tiny", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_tiny is not None:
        _serve_tiny(args.serve_tiny)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    from nudgeserve.serve.ray.local import free_port

    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {MODES}")
    rows: list[Row] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ingress-") as tmp:
        workdir = Path(tmp)
        runs: list[tuple[str, str, str]] = []
        if "tiny" in args.apps:
            runs += [("tiny", "-", m) for m in modes]
        if "nudgeserve" in args.apps:
            runs += [("nudgeserve", p, m) for p in args.placements.split(",") if p for m in modes]
        bodies = _obd_bodies() if "nudgeserve" in args.apps else {}
        tiny_body = {"/": (b"\x00\x00\x80\x3f" * 16, "application/octet-stream")}
        for app, placement, mode in runs:
            port = free_port()
            if app == "tiny":
                cmd = [sys.executable, "-m", "benchmarks.ingress", "--serve-tiny", str(port)]
                routes = tiny_body
            else:
                cfg = _config_file(workdir, mode, placement)
                cmd = [
                    sys.executable,
                    "-m",
                    "nudgeserve.cli",
                    "run",
                    "--config",
                    str(cfg),
                    "--port",
                    str(port),
                ]
                routes = bodies
            print(f"{app} {placement} {mode}: starting on port {port}", file=sys.stderr, flush=True)
            proc = _start(cmd, _env_for(mode, port), port, workdir / f"{app}-{mode}.log")
            try:
                for route, (body, ctype) in routes.items():
                    samples = [
                        _wrk(
                            f"http://127.0.0.1:{port}{route}",
                            body,
                            ctype,
                            args.duration,
                            args.connections,
                            workdir,
                        )
                        for _ in range(args.repeats)
                    ]
                    rps = statistics.median(s[0] for s in samples)
                    row = Row(
                        app,
                        placement,
                        route,
                        mode,
                        rps,
                        statistics.median(s[1] for s in samples),
                        statistics.median(s[2] for s in samples),
                        sum(s[3] for s in samples),
                    )
                    rows.append(row)
                    print(
                        f"  {route}: {rps:,.0f} req/s p50 {row.p50_ms:.2f} ms "
                        f"p99 {row.p99_ms:.2f} ms non-2xx {row.non_2xx}",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                _stop(proc)
    for row in rows:
        base = [
            r
            for r in rows
            if (r.app, r.placement, r.route, r.mode) == (row.app, row.placement, row.route, "proxy")
        ]
        if base and base[0].rps > 0:
            row.ratio = row.rps / base[0].rps
    print(
        f"machine: {os.cpu_count()} CPUs; 1-min load average before / after: "
        f"{load_before[0]:.2f} / {os.getloadavg()[0]:.2f} (above 0, other processes competed)"
    )
    header = (
        f"{'app':<11}{'placement':<10}{'route':<29}{'mode':<22}{'req/s':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'x proxy':>9}"
    )
    print(header)
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        print(
            f"{r.app:<11}{r.placement:<10}{r.route:<29}{r.mode:<22}{r.rps:>9,.0f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{ratio:>9}"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
