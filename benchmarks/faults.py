"""What a client sees when the server's processes die or are told to stop, with real processes.

    python -m benchmarks.faults [--rate 300] [--scenario kill,term] [--json PATH]

Each scenario starts ``nudgeserve run`` (default config, its own session, state dir and Ray
temp dir under a fresh temp dir, a free port), waits until it is ready, and drives it with
open-loop ``POST /v1/decide`` traffic (Poisson arrivals at ``--rate``/s, real Open Bandit
contexts from ``_load_workload.decide_bodies``) from a small client of its own
(``_fault_client``): keep-alive connections (a pool that reconnects after any failure),
every request with a 2 s timeout, and for each request its scheduled send time, completion
time, outcome and, for a 200, the ``decision_id`` of the answer. The JSON holds, besides
the figures below, a timeline: requests by outcome per slice of time after the fault.

- ``kill``: after ``--before`` seconds the gateway replica (the process named
  ``ray::ServeReplica:nudgeserve:gateway`` in this run's session) is SIGKILLed; the load
  goes on for ``--after`` seconds while Ray Serve's controller starts a new replica, which
  binds the port again. Reported: seconds from the kill until a request sent after it was
  answered 200, when the new replica process appeared, the failures by kind (connection
  refused, connection lost, timeout, HTTP status) and the 200s.
- ``term``: after ``--before`` seconds ``nudgeserve run`` itself gets SIGTERM (its graceful
  stop: the gateways drain, Serve and Ray shut down). A thread polls ``/v2/health/ready``
  every 20 ms. Reported: seconds until it answered 503 or refused, the requests sent after
  the signal by outcome, seconds from the signal and from the last 200 to the process's
  exit, Ray processes of the run still alive at that moment, and whether a new
  ``nudgeserve run`` on the same port (same state dir) started at once, with its seconds
  until ready.

After each scenario the servers are stopped cleanly (SIGINT, then SIGKILL to anything of
their sessions left after 60 s) and every acknowledged ``decision_id`` is looked up in
``<state dir>/decisions.sqlite`` (opened read-only): a 200 is a promise that the decision
is logged, so none may be missing.

Every process started here runs in its own session; Ray's workers put themselves in their
own process groups inside that session, so stopping kills by session, process by process.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks._fault_client import (
    HOST,
    LoadDriver,
    Outcome,
    kinds_between,
    now,
    timeline,
)
from benchmarks._load_systems import free_port

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_TITLE = "ServeReplica:nudgeserve:gateway"
READY_POLL_S = 0.02
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0
# Environment the server must not inherit: its own Ray (no RAY_ADDRESS), its own token
# (as tests/e2e/conftest.py), our temp dir and the built-in config.
_CLEARED_ENV = (
    "RAY_ADDRESS",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "NUDGESERVE_RAY_TEMP_DIR",
    "NUDGESERVE_CONFIG",
)


def progress(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


# --- the server processes ------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The name (field 2) is in parentheses and may hold spaces: split after it.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[3])


def session_processes(sid: int) -> list[int]:
    """Live processes (not zombies) of session ``sid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()
        if fields[0] != b"Z" and int(fields[3]) == sid:
            out.append(int(entry))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def gateway_pids(run_pid: int) -> list[int]:
    """The gateway replica processes of the ``nudgeserve run`` whose pid is ``run_pid``:
    named ``ray::ServeReplica:nudgeserve:gateway``, in its session (Ray's workers start
    their own process group, not their own session) and descended from it."""
    found = []
    for pid in session_processes(run_pid):
        if GATEWAY_TITLE not in _cmdline(pid):
            continue
        ancestor, hops = pid, 0
        while ancestor not in (run_pid, 0, 1) and hops < 16:
            stat = _stat(ancestor)
            ancestor = stat[0] if stat else 0
            hops += 1
        if ancestor == run_pid:
            found.append(pid)
    return found


def ready_status(port: int, timeout_s: float = 0.5) -> str:
    """``"200"``/``"503"``... for ``GET /v2/health/ready``, or ``"refused"``, ``"lost"``,
    ``"timeout"``."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request("GET", "/v2/health/ready")
        response = conn.getresponse()
        response.read()
        return str(response.status)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except (OSError, http.client.HTTPException):
        return "lost"
    finally:
        conn.close()


class NudgeRun:
    """``nudgeserve run`` in its own session: ``start()`` returns once it is ready (or
    raises); ``exit_at`` is when it exited (a thread waits for it); ``stop()`` stops it
    cleanly and then kills whatever of its session is left."""

    def __init__(self, port: int, state_dir: Path, ray_dir: Path, log_path: Path) -> None:
        self.port = port
        self.state_dir = state_dir
        self.ray_dir = ray_dir
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.started_at = math.nan
        self.ready_at = math.nan
        self.exit_at = math.nan
        self.leftovers_killed = 0
        self._waiter: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start it and wait until ``/v2/health/ready`` answers 200 (polled every 0.1 s);
        RuntimeError (with the log's tail) if it exits or is not ready in time."""
        env = dict(os.environ)
        for name in _CLEARED_ENV:
            env.pop(name, None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "nudgeserve.cli", "run", "--port", str(self.port),
            "--state-dir", str(self.state_dir), "--ray-temp-dir", str(self.ray_dir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.started_at = now()
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def wait_exit() -> None:
            proc.wait()
            self.exit_at = now()

        self._waiter = threading.Thread(target=wait_exit, name="run-exit", daemon=True)
        self._waiter.start()
        deadline = self.started_at + timeout_s
        while now() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"nudgeserve run exited with {proc.returncode} while starting; "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if ready_status(self.port, 1.0) == "200":
                self.ready_at = now()
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"not ready after {timeout_s:.0f} s; {self.log_path}:\n{self.log_tail()}"
        )

    def wait_exit(self, timeout_s: float) -> bool:
        if self._waiter is None:
            return True
        self._waiter.join(timeout_s)
        return not self._waiter.is_alive()

    def stop(self) -> None:
        """SIGINT to ``nudgeserve run`` (its graceful stop), up to ``STOP_TIMEOUT_S``;
        then SIGKILL to every process of its session still alive (counted in
        ``leftovers_killed``). Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            self.wait_exit(STOP_TIMEOUT_S)
        self.kill_session()

    def kill_session(self, grace_s: float = 5.0) -> None:
        """Waits up to ``grace_s`` for the session's processes to end, then SIGKILLs the
        rest, one by one."""
        proc = self.proc
        if proc is None:
            return
        deadline = now() + grace_s
        while session_processes(proc.pid) and now() < deadline:
            time.sleep(0.1)
        for pid in session_processes(proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                self.leftovers_killed += 1
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        deadline = now() + 10.0
        while session_processes(proc.pid) and now() < deadline:
            time.sleep(0.1)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def missing_decisions(db: Path, acknowledged: Sequence[str]) -> dict:
    """Acknowledged decision ids absent from the ``decisions`` table of ``db`` (read-only)."""
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        logged = {row[0] for row in conn.execute("SELECT decision_id FROM decisions")}
    finally:
        conn.close()
    missing = [d for d in acknowledged if d not in logged]
    return {
        "acknowledged": len(acknowledged),
        "logged": len(logged),
        "missing": len(missing),
        "missing_sample": missing[:5],
    }


def _acknowledged(outcomes: Iterable[Outcome]) -> list[str]:
    return [o.decision_id for o in outcomes if o.kind == "ok" and o.decision_id]


def decide_request_bodies(n: int = 256, seed: int = 0) -> list[bytes]:
    """``n`` real ``/v1/decide`` bodies (OBD contexts, 80 candidates, k = 3)."""
    from benchmarks._load_workload import decide_bodies, obd_contexts

    return decide_bodies(obd_contexts(n, seed=seed), 80, 3, seed=seed)


@dataclass
class Dirs:
    """Where one scenario writes: ``work`` (logs, state) and ``ray`` (Ray's temp dir; its
    path must stay short for Ray's Unix sockets)."""

    work: Path
    ray: Path


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


# --- scenario: SIGKILL of the gateway replica ----------------------------------------------


def run_kill(
    dirs: Dirs,
    rate: float = 300.0,
    before_s: float = 3.0,
    after_s: float = 20.0,
    after_recovery_s: float | None = None,
    bodies: Sequence[bytes] | None = None,
    seed: int = 0,
) -> dict:
    """Kill the gateway replica under load (see the module docstring).

    after_s: load seconds after the kill; with ``after_recovery_s`` the load stops that
    many seconds after the first 200 following the kill (at most ``after_s``).
    """
    bodies = bodies or decide_request_bodies(seed=seed)
    port = free_port()
    state = dirs.work / "kill-state"
    server = NudgeRun(port, state, dirs.ray, dirs.work / "kill-server.log")
    driver: LoadDriver | None = None
    outcomes: list[Outcome] = []
    result: dict = {"scenario": "kill", "rate": rate, "port": port}
    try:
        progress(f"kill: starting nudgeserve run on port {port}")
        server.start()
        result["start_to_ready_s"] = _round(server.ready_at - server.started_at)
        old = gateway_pids(server.pid)
        if len(old) != 1:
            raise RuntimeError(f"expected one gateway replica of run {server.pid}, found {old}")
        progress(f"kill: ready in {result['start_to_ready_s']} s; load at {rate:g}/s")
        driver = LoadDriver(port, bodies, rate, seed=seed).start()
        time.sleep(before_s)
        progress(f"kill: SIGKILL to the gateway replica (pid {old[0]})")
        t_kill = now()
        os.kill(old[0], signal.SIGKILL)
        new_pid, t_new = None, math.nan
        end = t_kill + after_s
        while now() < end:
            if new_pid is None:
                fresh = [p for p in gateway_pids(server.pid) if p != old[0]]
                if fresh:
                    new_pid, t_new = fresh[0], now()
                    progress(
                        f"kill: new gateway replica pid {new_pid} after {t_new - t_kill:.2f} s"
                    )
            if after_recovery_s is not None:
                first = driver.first_ok_after(t_kill)
                if first is not None:
                    end = min(end, first.done + after_recovery_s)
            time.sleep(0.1)
        outcomes = driver.stop()
        driver_errors = driver.first_errors
        driver = None
        first = None
        for o in outcomes:
            if o.kind == "ok" and o.scheduled >= t_kill and (first is None or o.done < first.done):
                first = o
        after = [o for o in outcomes if o.scheduled >= t_kill]
        failed = Counter(o.kind for o in outcomes if o.kind != "ok")
        result.update(
            {
                "gateway_pid_killed": old[0],
                "gateway_pid_new": new_pid,
                "new_replica_seen_s": _round(t_new - t_kill),
                "recovery_s": _round(first.done - t_kill) if first else None,
                "requests": len(outcomes),
                "ok": sum(o.kind == "ok" for o in outcomes),
                "failed": sum(failed.values()),
                "failed_by_kind": dict(failed),
                "after_kill_by_kind": dict(Counter(o.kind for o in after)),
                "load_after_kill_s": _round(outcomes[-1].scheduled - t_kill) if outcomes else None,
                "timeline_after_kill": timeline(outcomes, t_kill),
                "first_errors": driver_errors,
            }
        )
        progress(
            f"kill: recovered in {result['recovery_s']} s; failures {dict(failed)}; "
            "stopping the server"
        )
    finally:
        if driver is not None:
            outcomes = driver.stop()
        server.stop()
        result["leftover_processes_killed"] = server.leftovers_killed
    result["log"] = missing_decisions(state / "decisions.sqlite", _acknowledged(outcomes))
    progress(f"kill: decision log check {result['log']}")
    return result


# --- scenario: SIGTERM to nudgeserve run ---------------------------------------------------


class ReadyPoller:
    """Polls ``/v2/health/ready`` every ``interval_s`` on a thread: (start, done, status)."""

    def __init__(self, port: int, interval_s: float = READY_POLL_S) -> None:
        self.port = port
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ready-poll", daemon=True)

    def start(self) -> ReadyPoller:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float, str]]:
        self._stop.set()
        self._thread.join(5.0)
        return list(self.samples)

    def _run(self) -> None:
        tick = now()
        while not self._stop.is_set():
            t0 = now()
            status = ready_status(self.port, timeout_s=0.5)
            self.samples.append((t0, now(), status))
            tick += self.interval_s
            self._stop.wait(max(0.0, tick - now()))
            tick = max(tick, now() - self.interval_s)


def run_term(
    dirs: Dirs,
    rate: float = 300.0,
    before_s: float = 3.0,
    exit_timeout_s: float = 60.0,
    bodies: Sequence[bytes] | None = None,
    seed: int = 0,
) -> dict:
    """SIGTERM ``nudgeserve run`` under load, then restart it on the same port (see the
    module docstring)."""
    bodies = bodies or decide_request_bodies(seed=seed)
    port = free_port()
    state = dirs.work / "term-state"
    server = NudgeRun(port, state, dirs.ray, dirs.work / "term-server.log")
    again = NudgeRun(port, state, dirs.ray, dirs.work / "term-restart.log")
    driver: LoadDriver | None = None
    poller: ReadyPoller | None = None
    outcomes: list[Outcome] = []
    result: dict = {"scenario": "term", "rate": rate, "port": port}
    try:
        progress(f"term: starting nudgeserve run on port {port}")
        server.start()
        result["start_to_ready_s"] = _round(server.ready_at - server.started_at)
        progress(f"term: ready in {result['start_to_ready_s']} s; load at {rate:g}/s")
        driver = LoadDriver(port, bodies, rate, seed=seed).start()
        poller = ReadyPoller(port).start()
        time.sleep(before_s)
        progress(f"term: SIGTERM to nudgeserve run (pid {server.pid})")
        t_sig = now()
        os.kill(server.pid, signal.SIGTERM)
        exited = server.wait_exit(exit_timeout_s)
        t_exit = server.exit_at if exited else math.nan
        leftovers = session_processes(server.pid)
        outcomes = driver.stop()
        result["first_errors"] = driver.first_errors
        driver = None
        samples = poller.stop()
        poller = None
        if not exited:
            progress(f"term: nudgeserve run did not exit within {exit_timeout_s:g} s")
        # Restart at once on the same port, while the load's stragglers time out.
        progress(f"term: exited={exited}; {len(leftovers)} run processes left; restarting")
        restart: dict = {"started": False}
        try:
            again.start()
            restart = {
                "started": True,
                "start_to_ready_s": _round(again.ready_at - again.started_at),
            }
        except RuntimeError as exc:
            log = again.log_tail()
            restart = {"started": False, "already_in_use": "already in use" in log}
            progress(f"term: restart failed: {exc}")
        drained = [s for s in samples if s[0] >= t_sig and s[2] != "200"]
        before = [s for s in samples if s[1] < t_sig]
        oks = [o.done for o in outcomes if o.kind == "ok"]
        last_ok = max(oks) if oks else math.nan
        by_kind = kinds_between(outcomes, t_sig, t_exit if exited else math.inf)
        result.update(
            {
                "ready_before_signal": before[-1][2] if before else None,
                "not_ready_s": _round(drained[0][1] - t_sig) if drained else None,
                "not_ready_answer": drained[0][2] if drained else None,
                "requests": len(outcomes),
                "ok": len(oks),
                "after_signal_by_kind": by_kind,
                "after_signal_ok": by_kind.get("ok", 0),
                "after_signal_503": by_kind.get("http_503", 0),
                "after_signal_conn_errors": sum(
                    by_kind.get(k, 0) for k in ("refused", "lost", "timeout")
                ),
                "after_exit_by_kind": kinds_between(outcomes, t_exit) if exited else {},
                "exited": exited,
                "exit_code": server.proc.returncode if server.proc else None,
                "signal_to_exit_s": _round(t_exit - t_sig),
                "last_ok_to_exit_s": _round(t_exit - last_ok),
                "last_ok_after_signal_s": _round(last_ok - t_sig),
                "run_processes_left_at_exit": len(leftovers),
                "restart": restart,
                "timeline_after_signal": timeline(outcomes, t_sig, 0.1),
            }
        )
        progress(
            f"term: not ready after {result['not_ready_s']} s; exit after "
            f"{result['signal_to_exit_s']} s; restart {restart}"
        )
    finally:
        if poller is not None:
            poller.stop()
        if driver is not None:
            outcomes = driver.stop()
        server.stop()
        again.stop()
        result["leftover_processes_killed"] = server.leftovers_killed + again.leftovers_killed
    result["log"] = missing_decisions(state / "decisions.sqlite", _acknowledged(outcomes))
    progress(f"term: decision log check {result['log']}")
    return result


# --- report --------------------------------------------------------------------------------

_ROWS: dict[str, list[tuple[str, Callable[[dict], object]]]] = {
    "kill": [
        ("start to ready (s)", lambda r: r.get("start_to_ready_s")),
        ("kill -> new replica process seen (s)", lambda r: r.get("new_replica_seen_s")),
        ("kill -> first 200 again (s)", lambda r: r.get("recovery_s")),
        ("requests sent", lambda r: r.get("requests")),
        ("answered 200", lambda r: r.get("ok")),
        ("failed", lambda r: r.get("failed")),
        ("failed by kind", lambda r: r.get("failed_by_kind")),
        ("acknowledged / missing from log", lambda r: _log_cell(r)),
    ],
    "term": [
        ("start to ready (s)", lambda r: r.get("start_to_ready_s")),
        ("signal -> ready not 200 (s)", lambda r: _not_ready_cell(r)),
        ("after signal: 200 / 503 / conn errors", lambda r: _after_cell(r)),
        ("after signal by kind", lambda r: r.get("after_signal_by_kind")),
        ("signal -> exit (s)", lambda r: r.get("signal_to_exit_s")),
        ("last 200 -> exit (s)", lambda r: r.get("last_ok_to_exit_s")),
        ("run processes left at exit", lambda r: r.get("run_processes_left_at_exit")),
        ("restart on same port", lambda r: _restart_cell(r)),
        ("acknowledged / missing from log", lambda r: _log_cell(r)),
    ],
}


def _log_cell(r: dict) -> str:
    log = r.get("log") or {}
    return f"{log.get('acknowledged')} / {log.get('missing')}"


def _not_ready_cell(r: dict) -> str:
    return f"{r.get('not_ready_s')} ({r.get('not_ready_answer')})"


def _after_cell(r: dict) -> str:
    return f"{r.get('after_signal_ok')} / {r.get('after_signal_503')} / {r.get('after_signal_conn_errors')}"


def _restart_cell(r: dict) -> str:
    restart = r.get("restart") or {}
    if restart.get("started"):
        return f"started, ready in {restart.get('start_to_ready_s')} s"
    return f"FAILED ({'already in use' if restart.get('already_in_use') else 'see log'})"


def table(results: Sequence[dict]) -> str:
    lines = []
    for r in results:
        rows = _ROWS[r["scenario"]]
        lines.append(f"{r['scenario']} (open loop {r['rate']:g}/s)")
        width = max(len(name) for name, _ in rows)
        for name, cell in rows:
            lines.append(f"  {name:<{width}}  {cell(r)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.faults", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rate", type=float, default=300.0, help="requests/s offered (open loop)")
    p.add_argument("--scenario", default="kill,term", help="kill, term or kill,term")
    p.add_argument("--before", type=float, default=3.0, help="load seconds before the fault")
    p.add_argument("--after", type=float, default=20.0, help="load seconds after the kill")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    unknown = set(scenarios) - {"kill", "term"}
    if unknown or not scenarios:
        p.error(f"--scenario takes kill, term or kill,term; got {args.scenario!r}")
    if not args.rate > 0:
        p.error("--rate must be > 0")
    bodies = decide_request_bodies(seed=args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="nsf-") as tmp:
        for name in scenarios:
            dirs = Dirs(Path(tmp) / name, Path(tmp) / f"r{name[0]}")
            dirs.work.mkdir(parents=True)
            if name == "kill":
                results.append(
                    run_kill(
                        dirs, args.rate, args.before, args.after, bodies=bodies, seed=args.seed
                    )
                )
            else:
                results.append(
                    run_term(dirs, args.rate, args.before, bodies=bodies, seed=args.seed)
                )
    print(table(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
        progress(f"wrote {args.json}")
    bad = [r["scenario"] for r in results if (r.get("log") or {}).get("missing")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
