"""install_sigterm_handler in-process, on SIGUSR1 so the test runner survives."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from nudgeserve.serve.decisions import install_sigterm_handler
from nudgeserve.serve.decisions._sample import sample_decisions

from .conftest import stored_ids


def test_handler_drains_then_calls_the_previous_handler(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=5000)
    calls = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        uninstall = install_sigterm_handler([log], signals=[signal.SIGUSR1])
        log.append_many(sample_decisions(25))
        assert stored_ids(db_path) == set()  # waiting for the 5 s batch deadline
        os.kill(os.getpid(), signal.SIGUSR1)
        assert log.closed and len(stored_ids(db_path)) == 25
        assert calls == [signal.SIGUSR1]
        uninstall()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert calls == [signal.SIGUSR1] * 2  # the previous handler is back
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_ignored_signal_stays_ignored_after_the_drain(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=5000)
    before = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        install_sigterm_handler([log], signals=[signal.SIGUSR1])
        log.append(sample_decisions(1)[0])
        os.kill(os.getpid(), signal.SIGUSR1)  # would kill the test run if re-raised
        assert log.closed and len(stored_ids(db_path)) == 1
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_bad_use_is_refused(open_log):
    with pytest.raises(TypeError, match=r"logs\[0\]"):
        install_sigterm_handler([object()])
    errors = []

    def off_main():
        try:
            install_sigterm_handler([open_log()])
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=off_main)
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0])


def test_stats_count_what_was_written(open_log):
    log = open_log()
    log.append_many(sample_decisions(10))
    log.append(sample_decisions(1)[0])  # d0 again: a duplicate
    st = log.stats()
    assert (st.written, st.duplicate_decisions, st.batches, st.queue_depth) == (11, 1, 2, 0)
    assert st.last_batch_records == 1 and st.last_commit_s > 0
