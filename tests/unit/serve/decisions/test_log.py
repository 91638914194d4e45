"""DecisionLog: durability modes, group commit, bounded queue, close, write failures."""

from __future__ import annotations

import asyncio
import glob
import sqlite3
import threading
import time

import msgspec
import numpy as np
import pytest

from nudgeserve.serve.decisions import (
    DecisionLogClosed,
    DecisionLogOverloaded,
    DecisionLogWriteError,
    InvalidDecisionRecord,
)
from nudgeserve.serve.decisions._sample import sample_decisions

from .conftest import query, stored_ids


class HeldWriteLock:
    """Hold SQLite's write lock from another connection, as a busy replica would."""

    def __init__(self, path):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self):
        self.conn.execute("COMMIT")
        self.conn.close()


def test_commit_mode_append_returns_after_the_commit(open_log, db_path):
    log = open_log(durability="commit")
    for rec in sample_decisions(20):
        log.append(rec)
        # Seen by an independent connection the moment append returns.
        assert query(
            db_path, "SELECT 1 FROM decisions WHERE decision_id = ?", (rec.decision_id,)
        ) == [(1,)]


def test_commit_mode_waits_for_a_held_lock(open_log, db_path):
    log = open_log(durability="commit")
    lock = HeldWriteLock(db_path)
    done = threading.Event()
    t = threading.Thread(target=lambda: (log.append(sample_decisions(1)[0]), done.set()))
    t.start()
    assert not done.wait(0.3)  # cannot be acknowledged while the write cannot commit
    lock.release()
    assert done.wait(10)
    t.join()


def test_a_lock_held_past_every_retry_fails_the_append_not_the_log(open_log, db_path):
    log = open_log(durability="commit", busy_timeout_ms=20)
    lock = HeldWriteLock(db_path)
    with pytest.raises(DecisionLogWriteError, match="locked"):
        log.append(sample_decisions(1)[0])
    lock.release()
    log.append(sample_decisions(2)[1])
    assert stored_ids(db_path) == {"d1"}


def test_enqueue_mode_returns_before_the_commit_and_flush_commits(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=2000)
    recs = sample_decisions(5)
    for rec in recs:
        log.append(rec)
    assert stored_ids(db_path) == set()  # still waiting for the 2 s batch deadline
    log.flush()
    assert stored_ids(db_path) == {r.decision_id for r in recs}


def test_batch_commits_when_max_delay_passes(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=150, max_batch=1000)
    t0 = time.monotonic()
    log.append(sample_decisions(1)[0])
    while not stored_ids(db_path):
        assert time.monotonic() - t0 < 10, "batch never committed"
        time.sleep(0.005)
    assert time.monotonic() - t0 >= 0.14


def test_batch_commits_at_max_batch_records(open_log, db_path):
    log = open_log(durability="enqueue", max_batch=8, max_delay_ms=5000)
    lock = HeldWriteLock(db_path)
    log.append_many(sample_decisions(50)[:2])  # the writer takes these and waits on the lock
    for rec in sample_decisions(50)[2:]:
        log.append(rec)
    lock.release()
    t0 = time.monotonic()
    log.flush()
    # 50 records under a 5 s delay: only the 8-record cap can close batches this fast.
    assert time.monotonic() - t0 < 4
    st = log.stats()
    assert st.written == 50 and st.batches >= 7 and st.last_batch_records <= 8


def test_concurrent_commit_mode_appends_share_group_commits(open_log, db_path):
    log = open_log(durability="commit", max_delay_ms=20)
    recs = sample_decisions(400)
    threads = [
        threading.Thread(target=lambda part: [log.append(r) for r in part], args=(recs[i::8],))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = log.stats()
    assert st.written == 400 and len(stored_ids(db_path)) == 400
    assert st.batches <= 100, st  # one commit per decision would be 400


def test_full_queue_sheds_load_then_recovers(open_log, db_path):
    log = open_log(durability="enqueue", max_queue=5)
    lock = HeldWriteLock(db_path)
    accepted = []
    with pytest.raises(DecisionLogOverloaded, match="max_queue"):
        for rec in sample_decisions(100):
            log.append(rec)
            accepted.append(rec.decision_id)
    assert 5 <= len(accepted) <= 7
    lock.release()
    log.close()
    assert stored_ids(db_path) == set(accepted)


def test_queue_many_queues_at_once_and_its_wait_ends_at_the_commit(open_log, db_path):
    log = open_log(durability="commit", max_queue=2)
    lock = HeldWriteLock(db_path)

    async def main():
        waits, queued = [], set()
        # Batches are queued at the call (the caller goes on) and none is committed:
        # the writer cannot take the lock. Past max_queue waiting items the call itself
        # refuses the batch, before anything is awaited.
        with pytest.raises(DecisionLogOverloaded, match="max_queue"):
            for i in range(10):
                batch = sample_decisions(3, prefix=f"b{i}-")
                waits.append(log.queue_many(batch))
                queued |= {r.decision_id for r in batch}
                await asyncio.sleep(0.05)
        assert 2 <= len(waits) <= 4
        pending = asyncio.gather(*waits)
        await asyncio.sleep(0.1)
        assert not pending.done() and stored_ids(db_path) == set()
        lock.release()
        await pending
        assert stored_ids(db_path) == queued
        await log.queue_many([])  # nothing to queue: complete at once

    asyncio.run(main())


def test_close_drains_and_refuses_new_records(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=5000)
    recs = sample_decisions(30)
    log.append_many(recs)
    log.close()
    assert len(stored_ids(db_path)) == 30
    assert log.closed
    with pytest.raises(DecisionLogClosed):
        log.append(sample_decisions(1, prefix="late")[0])
    with pytest.raises(DecisionLogClosed):
        log.flush()
    log.close()  # idempotent


def test_context_manager_closes(open_log, db_path):
    with open_log(durability="enqueue", max_delay_ms=5000) as log:
        log.append(sample_decisions(1)[0])
    assert log.closed and len(stored_ids(db_path)) == 1


def test_every_acknowledged_append_survives_a_concurrent_close(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=1)
    acked: list[list[str]] = [[] for _ in range(4)]
    template = sample_decisions(1)[0]
    streams = [
        [msgspec.structs.replace(template, decision_id=f"t{i}-{j}") for j in range(50_000)]
        for i in range(4)
    ]

    def produce(i):
        for rec in streams[i]:
            try:
                log.append(rec)
            except DecisionLogClosed:
                return
            acked[i].append(rec.decision_id)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    log.close()
    for t in threads:
        t.join()
    all_acked = {d for part in acked for d in part}
    assert 0 < len(all_acked) < 200_000  # close() really came mid-stream
    assert all_acked <= stored_ids(db_path)


def test_duplicate_decision_id_is_stored_once(open_log, db_path):
    log = open_log()
    rec = sample_decisions(1)[0]
    log.append(rec)
    log.append(msgspec.structs.replace(rec, unit_id="someone else"))
    assert query(db_path, "SELECT unit_id FROM decisions") == [(rec.unit_id,)]
    assert log.stats().duplicate_decisions == 1


def test_invalid_record_is_refused_before_queueing(open_log, db_path):
    log = open_log()
    bad = msgspec.structs.replace(sample_decisions(1)[0], propensities=[0.1, 0.2, 2.0])
    with pytest.raises(InvalidDecisionRecord, match="propensities"):
        log.append(bad)
    with pytest.raises(InvalidDecisionRecord, match="propensities"):
        log.append_many([*sample_decisions(2), bad])  # all or none
    log.flush()
    assert stored_ids(db_path) == set()


def test_get_decision_round_trips(open_log):
    log = open_log()
    rec = sample_decisions(1)[0]
    rec = msgspec.structs.replace(rec, scores=np.asarray(rec.scores))
    log.append(rec)
    back = log.get_decision(rec.decision_id)
    assert back.actions == rec.actions and back.scores == rec.scores.tolist()
    assert back.features == rec.features and back.candidates == rec.candidates
    assert log.get_decision("nope") is None
    with pytest.raises(TypeError, match="decision_id"):
        log.get_decision(3)


def test_async_append_awaits_the_commit_without_blocking_the_loop(open_log, db_path):
    log = open_log(durability="commit")
    recs = sample_decisions(50)

    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        lock = HeldWriteLock(db_path)
        tick_task = asyncio.create_task(ticker())
        appends = asyncio.gather(*(log.append_async(r) for r in recs))
        await asyncio.sleep(0.3)
        assert stored_ids(db_path) == set()  # not acknowledged: the writer cannot commit
        lock.release()
        await appends
        assert len(stored_ids(db_path)) == 50
        stop.set()
        await tick_task
        return ticks

    assert asyncio.run(main()) >= 10  # the loop kept running while appends waited


def test_async_flush_and_close(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=5000)

    async def main():
        await log.append_many_async(sample_decisions(10))
        await log.aflush()
        assert len(stored_ids(db_path)) == 10
        await log.append_async(sample_decisions(1, prefix="x")[0])
        await log.aclose()

    asyncio.run(main())
    assert len(stored_ids(db_path)) == 11 and log.closed


def _poison(path):
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON decisions "
        "WHEN NEW.unit_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
    )
    conn.commit()
    conn.close()


def test_a_failing_record_fails_alone_in_commit_mode(open_log, db_path):
    log = open_log(durability="commit", max_delay_ms=50)
    _poison(db_path)
    recs = sample_decisions(6)
    recs[3] = msgspec.structs.replace(recs[3], unit_id="poison")
    errors = {}

    def put(rec):
        try:
            log.append(rec)
        except DecisionLogWriteError as exc:
            errors[rec.decision_id] = exc

    threads = [threading.Thread(target=put, args=(r,)) for r in recs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(errors) == {"d3"} and "poisoned" in str(errors["d3"])
    assert stored_ids(db_path) == {"d0", "d1", "d2", "d4", "d5"}


def test_acknowledged_records_that_fail_are_spilled_and_imported_later(open_log, db_path):
    log = open_log(durability="enqueue", max_delay_ms=20)
    _poison(db_path)
    recs = sample_decisions(4)
    recs[1] = msgspec.structs.replace(recs[1], unit_id="poison")
    for rec in recs:
        log.append(rec)
    log.close()
    assert stored_ids(db_path) == {"d0", "d2", "d3"}
    assert log.stats().spilled == 1
    spills = glob.glob(db_path + ".unwritten-*.msgpack")
    assert len(spills) == 1
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TRIGGER poison")
    conn.commit()
    conn.close()
    open_log(durability="enqueue").close()
    assert stored_ids(db_path) == {"d0", "d1", "d2", "d3"}
    assert glob.glob(db_path + ".unwritten-*.msgpack") == []
