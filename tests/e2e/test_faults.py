"""Faults under load against real processes, with the fault benchmark's own functions
(``benchmarks/faults.py``) at a smaller load: each test starts its own ``nudgeserve run``
(own session, state dir in ``tmp_path``, Ray temp dir from ``tests._scratch``, a token of
its own as in ``conftest.py``) and stops every process it started.

- SIGKILL of the gateway replica: Ray Serve's controller starts a new one, which binds the
  port again; the port answers 200 again within 15 s and no acknowledged decision is lost.
- SIGTERM to ``nudgeserve run``: it drains and exits within 10 s, and a new run on the same
  port starts at once (no "already in use") and gets ready.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.faults import Dirs, decide_request_bodies, run_kill, run_term
from tests._scratch import ray_temp_dir

pytestmark = pytest.mark.slow

RATE = 100.0
BEFORE_S = 1.5
RECOVERY_LIMIT_S = 15.0
EXIT_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def bodies() -> list[bytes]:
    return decide_request_bodies(64)


def _show(result: dict) -> str:
    return json.dumps(result, indent=1)


def test_killed_gateway_replica_is_replaced_and_loses_no_decision(tmp_path, bodies):
    result = run_kill(
        Dirs(tmp_path, ray_temp_dir("faults-kill")),
        rate=RATE,
        before_s=BEFORE_S,
        after_s=RECOVERY_LIMIT_S + 2.0,
        after_recovery_s=1.0,
        bodies=bodies,
    )
    assert result["gateway_pid_new"] not in (None, result["gateway_pid_killed"]), _show(result)
    assert result["recovery_s"] is not None, _show(result)
    # Most of this is Ray Serve's health-check period (10 s by default): its controller
    # notices the dead replica at its next check, then the new one starts in about 5 s.
    assert result["recovery_s"] <= RECOVERY_LIMIT_S, _show(result)
    log = result["log"]
    assert log["acknowledged"] > 0, _show(result)
    assert log["missing"] == 0, _show(result)


def test_sigterm_drains_exits_and_the_port_is_free_for_a_restart(tmp_path, bodies):
    result = run_term(
        Dirs(tmp_path, ray_temp_dir("faults-term")),
        rate=RATE,
        before_s=BEFORE_S,
        exit_timeout_s=30.0,
        bodies=bodies,
    )
    assert result["ready_before_signal"] == "200", _show(result)
    # Not ready (503, or nothing listening) soon after the signal: new traffic goes elsewhere.
    assert result["not_ready_s"] is not None and result["not_ready_s"] <= 2.0, _show(result)
    assert result["exited"] and result["exit_code"] == 0, _show(result)
    assert result["signal_to_exit_s"] <= EXIT_LIMIT_S, _show(result)
    assert result["restart"]["started"], _show(result)
    log = result["log"]
    assert log["acknowledged"] > 0, _show(result)
    assert log["missing"] == 0, _show(result)
