"""Start, probe and stop the servers the load benchmark drives, each as a subprocess.

Every server runs in its own session (process group) so that stopping it also stops
what it started (Ray's workers, PyTriton's ``tritonserver``). Stopping sends SIGINT to
the server (its graceful path: Ray Serve shutdown, Triton's context exit), then SIGTERM
and SIGKILL to that group only, after bounded waits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; connection failures raise OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post_json(url: str, payload: object, timeout_s: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ManagedServer:
    """A server subprocess: ``start()`` waits until ``ready_path`` answers 200.

    name: shown in progress lines and errors. cmd/env/cwd: how to run it.
    base_url: ``http://127.0.0.1:PORT``. log_path: its stdout and stderr.
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        base_url: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_path: str = "/v2/health/ready",
        start_timeout_s: float = 240.0,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.base_url = base_url.rstrip("/")
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.ready_path = ready_path
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} while "
                    f"starting; last lines of {self.log_path}:\n{self.log_tail()}"
                )
            try:
                status, _ = http_get(self.base_url + self.ready_path, timeout_s=2.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"{self.name} not ready at {self.base_url}{self.ready_path} after "
            f"{self.start_timeout_s:.0f}s; last lines of {self.log_path}:\n"
            f"{self.log_tail()}"
        )

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        pgid = proc.pid  # start_new_session: the group id is the server's own pid
        # SIGINT goes to the server alone, so its graceful path (Ray Serve shutdown, Triton's
        # context exit) runs while its children are still up; the group gets the rest.
        for sig, wait_s, whole_group in (
            (signal.SIGINT, 30.0, False),
            (signal.SIGTERM, 10.0, True),
            (signal.SIGKILL, 5.0, True),
        ):
            if proc.poll() is not None and not _group_alive(pgid):
                return
            try:
                if whole_group:
                    os.killpg(pgid, sig)
                elif proc.poll() is None:
                    proc.send_signal(sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if proc.poll() is not None and not _group_alive(pgid):
                    return
                time.sleep(0.2)

    def log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
