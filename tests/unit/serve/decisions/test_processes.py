"""Real processes: SIGTERM mid-stream loses no acknowledged decision, SIGKILL loses none
in commit durability, interpreter exit drains, two processes write one file at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import query, stored_ids

ROOT = Path(__file__).resolve().parents[4]

# Appends decisions as fast as it can and prints each id once append() has returned:
# a printed id is a decision the "client" was told about.
WRITER = """
import sys
import msgspec
from nudgeserve.serve.decisions import DecisionLog, install_sigterm_handler
from nudgeserve.serve.decisions._sample import sample_decisions

path, mode, delay_ms, handler, close = sys.argv[1:6]
log = DecisionLog(path, durability=mode, max_delay_ms=float(delay_ms))
if handler == "1":
    install_sigterm_handler([log])
template = sample_decisions(1)[0]
out = sys.stdout
out.write("ready\\n")
out.flush()
for i in range(int(sys.argv[6])):
    log.append(msgspec.structs.replace(template, decision_id=f"c{i}"))
    out.write(f"c{i}\\n")
    out.flush()
if close == "1":
    log.close()
out.write("done\\n")
out.flush()
"""


def _start(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _acked_after(proc, n_before_signal, sig):
    """Read acks, send ``sig`` after ``n_before_signal`` of them, read the rest."""
    assert proc.stdout.readline() == "ready\n", proc.stderr.read()
    acked = []
    while len(acked) < n_before_signal:
        line = proc.stdout.readline()
        assert line.endswith("\n"), proc.stderr.read()
        acked.append(line.strip())
    proc.send_signal(sig)
    rest, err = proc.communicate(timeout=60)
    # a line cut by the kill has no newline: that append returned but was never "sent"
    acked += [ln for ln in rest.split("\n")[:-1] if ln.startswith("c")]
    return acked, err


@pytest.mark.parametrize(("mode", "delay_ms"), [("commit", 0), ("enqueue", 1000)])
def test_sigterm_mid_stream_loses_no_acknowledged_decision(db_path, mode, delay_ms):
    proc = _start(WRITER, db_path, mode, delay_ms, 1, 1, 10_000_000)
    acked, err = _acked_after(proc, 300, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM, err  # died of the signal, after draining
    assert len(acked) >= 300 and "done" not in acked
    missing = set(acked) - stored_ids(db_path)
    assert not missing, f"{len(missing)} acknowledged decisions lost; stderr: {err}"


def test_without_the_handler_enqueued_decisions_die_with_the_process(db_path):
    # The control for the test above: same stream, no handler, so SIGTERM kills at once
    # and the records queued in memory (a 2 s batch window) are gone.
    proc = _start(WRITER, db_path, "enqueue", 2000, 0, 1, 10_000_000)
    acked, _ = _acked_after(proc, 300, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM
    assert len(set(acked) - stored_ids(db_path)) > 0


def test_sigkill_loses_no_decision_acknowledged_in_commit_mode(db_path):
    proc = _start(WRITER, db_path, "commit", 0, 0, 1, 10_000_000)
    acked, err = _acked_after(proc, 300, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not set(acked) - stored_ids(db_path), err


def test_interpreter_exit_without_close_drains_the_queue(db_path):
    proc = _start(WRITER, db_path, "enqueue", 5000, 0, 0, 500)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.endswith("done\n")
    assert len(stored_ids(db_path)) == 500


# Appends n decisions and, every 10th, a click for the other process's decision with
# the same number (which may not exist yet: then it is orphaned and joined later).
PEER = """
import sys, time
from nudgeserve.serve.decisions import DecisionLog, FeedbackEvent
from nudgeserve.serve.decisions._sample import sample_decisions

path, mine, other, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
recs = sample_decisions(n, prefix=mine, start_time=time.time())
log = DecisionLog(path)
print("ready", flush=True)
sys.stdin.readline()
statuses = {}
for i, rec in enumerate(recs):
    log.append(rec)
    if i % 10 == 0:
        res = log.record_feedback(FeedbackEvent(
            decision_id=f"{other}{i}", event_id=f"from-{mine}", kind="click"))
        statuses[res.status] = statuses.get(res.status, 0) + 1
log.close()
print(statuses, flush=True)
"""


def test_two_processes_write_one_file_concurrently(db_path, open_log):
    open_log().close()  # create the schema first so both start writing at once
    n = 1000
    procs = [_start(PEER, db_path, "a", "b", n), _start(PEER, db_path, "b", "a", n)]
    for p in procs:
        assert p.stdout.readline() == "ready\n", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "joined" in out or "orphaned" in out
    ids = stored_ids(db_path)
    assert ids == {f"{p}{i}" for p in "ab" for i in range(n)}
    # every cross-process click ended joined, whichever side committed first
    assert query(db_path, "SELECT COUNT(*) FROM feedback") == [(2 * n // 10,)]
    assert query(db_path, "SELECT COUNT(*) FROM orphan_feedback") == [(0,)]
