"""Feedback: idempotent by (decision_id, event_id), orphans kept and late-joined, the
late window, and a model of the whole join checked against the Parquet export."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections import defaultdict

import msgspec
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nudgeserve.serve.decisions import (
    DecisionLog,
    DecisionRecord,
    FeedbackEvent,
    InvalidFeedback,
    InvalidFeedbackType,
)
from nudgeserve.serve.decisions._sample import sample_decisions

from .conftest import query


def _recent(n=1):
    """Decisions made just now, so events timed on receipt fall inside the window."""
    return sample_decisions(n, start_time=time.time())


def _click(did, eid="e1", **kw):
    return FeedbackEvent(decision_id=did, event_id=eid, kind="click", **kw)


def test_event_joins_once(open_log, db_path):
    log = open_log()
    rec = _recent()[0]
    log.append(rec)
    assert log.record_feedback(_click("d0")).status == "joined"
    again = log.record_feedback(_click("d0", value=5.0))
    assert again.status == "duplicate" and "joined" in again.detail
    assert query(db_path, "SELECT value FROM feedback") == [(1.0,)]  # the first one counts


def test_repeat_within_one_call_is_a_duplicate(open_log):
    log = open_log()
    log.append(_recent()[0])
    res = log.record_feedback_many([_click("d0"), _click("d0"), _click("d0", "e2")])
    assert [r.status for r in res] == ["joined", "duplicate", "joined"]


def test_unknown_decision_is_kept_and_joined_when_it_arrives(open_log, db_path):
    log = open_log()
    rec = sample_decisions(1)[0]
    res = log.record_feedback(_click("d0", time=rec.time + 5, action=rec.actions[1]))
    assert res.status == "orphaned" and "kept" in res.detail
    assert query(db_path, "SELECT reason FROM orphan_feedback") == [("unknown_decision",)]
    assert query(db_path, "SELECT COUNT(*) FROM feedback") == [(0,)]
    log.append(rec)
    assert query(db_path, "SELECT COUNT(*) FROM orphan_feedback") == [(0,)]
    assert query(db_path, "SELECT decision_id, action FROM feedback") == [("d0", rec.actions[1])]
    assert log.record_feedback(_click("d0")).status == "duplicate"


def test_orphan_from_another_replica_is_joined(open_log, db_path):
    replica_a, replica_b = open_log(), open_log()
    rec = sample_decisions(1)[0]
    assert replica_b.record_feedback(_click("d0", time=rec.time)).status == "orphaned"
    replica_a.append(rec)
    assert query(db_path, "SELECT COUNT(*) FROM feedback") == [(1,)]


def test_event_after_the_late_window_is_kept_but_not_joined(open_log, db_path):
    log = open_log(late_window_s=60)
    rec = sample_decisions(1)[0]
    log.append(rec)
    assert log.record_feedback(_click("d0", "in", time=rec.time + 59)).status == "joined"
    late = log.record_feedback(_click("d0", "late", time=rec.time + 61))
    assert late.status == "expired" and "late window" in late.detail
    assert query(db_path, "SELECT event_id, reason FROM orphan_feedback") == [("late", "expired")]
    assert log.record_feedback(_click("d0", "late", time=rec.time + 61)).status == "duplicate"


def test_orphan_outside_the_window_stays_aside_when_its_decision_arrives(open_log, db_path):
    log = open_log(late_window_s=60)
    rec = sample_decisions(1)[0]
    log.record_feedback(_click("d0", "late", time=rec.time + 600))
    log.record_feedback(_click("d0", "bad", time=rec.time, action="not-shown"))
    log.append(rec)
    assert sorted(query(db_path, "SELECT event_id, reason FROM orphan_feedback")) == [
        ("bad", "unknown_action"),
        ("late", "expired"),
    ]
    assert query(db_path, "SELECT COUNT(*) FROM feedback") == [(0,)]


def test_event_for_an_action_not_chosen_is_rejected_and_kept(open_log, db_path):
    log = open_log()
    rec = _recent()[0]
    log.append(rec)
    shown_not_chosen = next(c for c in rec.candidates if c not in rec.actions)
    res = log.record_feedback(_click("d0", action=shown_not_chosen))
    assert res.status == "rejected" and shown_not_chosen in res.detail
    assert query(db_path, "SELECT reason FROM orphan_feedback") == [("unknown_action",)]


def test_missing_event_time_is_the_receive_time(open_log, db_path):
    log = open_log()
    log.append(_recent()[0])
    t0 = time.time()
    log.record_feedback(_click("d0"))
    ((t, received),) = query(db_path, "SELECT time, received_at FROM feedback")
    assert t == received and t0 <= t <= time.time()


def test_async_feedback(open_log):
    log = open_log()

    async def main():
        await log.append_async(_recent()[0])
        one = await log.record_feedback_async(_click("d0"))
        many = await log.record_feedback_many_async([_click("d0", "e2"), _click("zz")])
        return [one.status] + [r.status for r in many]

    assert asyncio.run(main()) == ["joined", "joined", "orphaned"]


def test_bad_feedback_is_refused_naming_the_field(open_log, db_path):
    log = open_log(outcome_kinds=("click", "add_to_cart"))
    with pytest.raises(InvalidFeedback, match="kind"):
        log.record_feedback(FeedbackEvent(decision_id="d", event_id="e", kind="visit"))
    with pytest.raises(InvalidFeedbackType, match="sequence"):
        log.record_feedback_many(_click("d0"))
    with pytest.raises(InvalidFeedbackType, match="event must be a FeedbackEvent"):
        log.record_feedback_many([{"decision_id": "d"}])
    assert log.record_feedback_many([]) == []
    assert query(db_path, "SELECT COUNT(*) FROM orphan_feedback") == [(0,)]


# -- the whole join against a model -----------------------------------------------------

WINDOW = 100.0
KINDS = ("click", "visit", "conversion", "spend")


def _decision(i: int) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"d{i}",
        time=1000.0 + i,
        unit_id="u",
        experiment="e",
        variant="v",
        model_version="m",
        policy="p",
        candidates=["a", "b", "c", "x"],
        actions=["a", "b", "c"][: 1 + i % 3],
        scores=[0.5] * (1 + i % 3),
        propensities=[0.25] * (1 + i % 3),
    )


_event = st.tuples(
    st.integers(0, 5),  # decision index (4, 5 never logged)
    st.sampled_from(["e1", "e2", "e3"]),  # few ids: duplicates are frequent
    st.sampled_from(KINDS),
    st.sampled_from([1.0, 2.5, -1.0]),
    st.sampled_from([0.0, 50.0, 99.0, 101.0]),  # offset from the decision time
    st.sampled_from(["a", "b", "c", "x", None]),
)
_feedback_op = st.tuples(st.just("feedback"), st.lists(_event, min_size=1, max_size=6))
# Always: events first (many become orphans), then decisions and events interleaved,
# then every decision 0-3, so late joins, expiries and rejections all get exercised.
_ops = st.tuples(
    _feedback_op,
    st.lists(st.one_of(st.tuples(st.just("decide"), st.integers(0, 3)), _feedback_op), max_size=10),
).map(lambda t: [t[0], *t[1], *[("decide", i) for i in range(4)]])


class JoinModel:
    """The documented semantics, in plain Python."""

    def __init__(self):
        self.decisions: dict[str, DecisionRecord] = {}
        self.joined: dict[tuple[str, str], tuple] = {}
        self.kept: dict[tuple[str, str], str] = {}

    def classify(self, ev, rec):
        if ev[4] > rec.time + WINDOW:
            return "expired"
        if ev[5] is not None and ev[5] not in rec.actions:
            return "rejected"
        return "joined"

    def feedback(self, ev):
        key = (ev[0], ev[1])
        if key in self.joined or key in self.kept:
            return "duplicate"
        rec = self.decisions.get(ev[0])
        status = "orphaned" if rec is None else self.classify(ev, rec)
        if status == "joined":
            self.joined[key] = ev
        else:
            self.kept[key] = status
        return status

    def decide(self, rec):
        if rec.decision_id in self.decisions:
            return
        self.decisions[rec.decision_id] = rec
        for key, status in list(self.kept.items()):
            if key[0] == rec.decision_id and status == "orphaned":
                ev = self.kept_events[key]
                new = self.classify(ev, rec)
                if new == "joined":
                    del self.kept[key]
                    self.joined[key] = ev
                else:
                    self.kept[key] = new

    def rewards(self):
        """{(decision_id, action): {kind: sum}} over joined events."""
        out = defaultdict(lambda: dict.fromkeys(KINDS, 0.0))
        for rec in self.decisions.values():
            for action in rec.actions:
                for ev in self.joined.values():
                    if ev[0] == rec.decision_id and ev[5] in (action, None):
                        out[(rec.decision_id, action)][ev[2]] += ev[3]
        return out


@settings(max_examples=40, deadline=None)
@given(_ops)
def test_join_matches_the_model(ops):
    model = JoinModel()
    model.kept_events = {}
    with tempfile.TemporaryDirectory() as d:
        log = DecisionLog(os.path.join(d, "x.db"), late_window_s=WINDOW)
        try:
            for op, arg in ops:
                if op == "decide":
                    rec = _decision(arg)
                    log.append(rec)
                    model.decide(rec)
                    continue
                events, expected = [], []
                for idx, eid, kind, value, offset, action in arg:
                    did = f"d{idx}"
                    ev = (did, eid, kind, value, 1000.0 + idx + offset, action)
                    events.append(
                        FeedbackEvent(
                            decision_id=did,
                            event_id=eid,
                            kind=kind,
                            value=value,
                            time=ev[4],
                            action=action,
                        )
                    )
                    model.kept_events.setdefault((did, eid), ev)
                    expected.append(model.feedback(ev))
                got = [r.status for r in log.record_feedback_many(events)]
                assert got == expected
            out = os.path.join(d, "x.parquet")
            summary = log.export_parquet(out)
        finally:
            log.close()
        table = pq.read_table(out).to_pylist()
    want = model.rewards()
    assert summary.decisions == len(model.decisions)
    assert len(table) == sum(len(r.actions) for r in model.decisions.values())
    for row in table:
        exp = want[(row["decision_id"], row["action_id"])]
        assert {k: row[k] for k in KINDS} == pytest.approx(exp), row["decision_id"]


def test_duplicate_decision_does_not_duplicate_feedback(open_log, db_path):
    log = open_log()
    rec = _recent()[0]
    log.append(rec)
    log.record_feedback(_click("d0"))
    log.append(msgspec.structs.replace(rec))
    assert query(db_path, "SELECT COUNT(*) FROM feedback") == [(1,)]
