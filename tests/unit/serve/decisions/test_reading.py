"""Reading the log back: ``read_decisions`` (filters, the joined feedback summed per
action and kind, one snapshot) and ``LogFollower`` (commit order, reward windows, limits,
per-slot rewards), on real SQLite files."""

from __future__ import annotations

import sqlite3

import pytest

from nudgeserve.serve.decisions import (
    DecisionRecord,
    FeedbackEvent,
    LogFollower,
    LoggedDecisions,
    read_decisions,
)

T0 = 1_700_000_000.0


def decision(
    decision_id: str,
    t: float,
    actions=("a", "b"),
    *,
    experiment: str = "",
    variant: str = "",
    use_case: str = "obd",
) -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        time=t,
        unit_id="u",
        experiment=experiment,
        variant=variant,
        model_version="1",
        policy="greedy",
        candidates=["a", "b", "c"],
        actions=list(actions),
        scores=[0.5] * len(actions),
        propensities=[0.5] * len(actions),
        use_case=use_case,
    )


def event(decision_id, event_id, action=None, kind="click", value=1.0, t=None):
    # Events at the decision's time by default: inside every late window.
    return FeedbackEvent(decision_id, event_id, kind, value=value, time=t, action=action)


@pytest.fixture
def logged(open_log, db_path):
    """Four decisions (two experiment arms, another use case, one outside experiments)
    with clicks, a visit, a spend and an orphan."""
    log = open_log()
    log.append_many(
        [
            decision("d0", T0, experiment="e", variant="control"),
            decision("d1", T0 + 10, experiment="e", variant="treated"),
            decision("d2", T0 + 20, use_case="hillstrom", experiment="e", variant="treated"),
            decision("d3", T0 + 30),
        ]
    )
    results = log.record_feedback_many(
        [
            event("d0", "c1", "a", t=T0 + 1),
            event("d0", "c2", "a", t=T0 + 2),  # the same slot again: summed, counted twice
            event("d0", "v1", None, kind="visit", t=T0 + 3),
            event("d1", "s1", None, kind="spend", value=12.5, t=T0 + 11),
            event("d1", "c1", "b", t=T0 + 12),
            event("d3", "c1", "b", t=T0 + 31),
            event("nobody", "c1", "a", t=T0 + 40),  # orphaned: never read
        ]
    )
    assert [r.status for r in results].count("orphaned") == 1
    log.flush()
    return log


def test_read_decisions_returns_records_in_log_order_with_summed_feedback(logged, db_path):
    got = read_decisions(db_path)
    assert [r.decision_id for r in got.records] == ["d0", "d1", "d2", "d3"]
    assert got.records[0] == decision("d0", T0, experiment="e", variant="control")
    assert sorted(got.feedback["d0"], key=str) == sorted(
        [("a", "click", 2.0, 2), (None, "visit", 1.0, 1)], key=str
    )
    assert "nobody" not in got.feedback and "d2" not in got.feedback
    rewards = got.slot_rewards("click")
    assert [r.tolist() for r in rewards] == [[2.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    spend = got.slot_rewards("spend")
    assert spend[1].tolist() == [12.5, 12.5]  # a decision-level event counts on every slot
    events, value = got.outcome_totals("click")
    assert events.tolist() == [2, 1, 0, 1] and value.tolist() == [2.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"experiment": "e"}, ["d0", "d1", "d2"]),
        ({"experiment": "e", "use_case": "obd"}, ["d0", "d1"]),
        ({"since": T0 + 10}, ["d1", "d2", "d3"]),
        ({"until": T0 + 20}, ["d0", "d1"]),  # until is exclusive
        ({"since": T0 + 10, "until": T0 + 30, "use_case": "hillstrom"}, ["d2"]),
        ({"experiment": "other"}, []),
    ],
)
def test_read_decisions_filters(logged, db_path, filters, expected):
    got = read_decisions(db_path, **filters)
    assert [r.decision_id for r in got.records] == expected
    # Feedback comes only for decisions inside the time and experiment filters.
    if "since" in filters:
        assert "d0" not in got.feedback


def test_read_decisions_names_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no decision log at"):
        read_decisions(tmp_path / "missing.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ValueError, match="is not a decision log"):
        read_decisions(other)


def test_logged_decisions_can_be_built_in_memory():
    rec = decision("d", T0)
    logged = LoggedDecisions([rec], {"d": [("b", "click", 3.0, 2)]})
    assert logged.slot_rewards("click")[0].tolist() == [0.0, 3.0]
    assert LoggedDecisions().slot_rewards("click") == []


# --------------------------------------------------------------------- LogFollower


def test_follower_of_a_missing_log_reads_nothing(tmp_path):
    follower = LogFollower(str(tmp_path / "later.db"), "obd", "click")
    assert not follower.log_exists()
    batch = follower.read(7, cutoff_time=T0, limit=10)
    assert (batch.records, batch.rewards, batch.through, batch.scanned) == ([], [], 7, 0)
    assert follower.decision_id_at(1) is None
    follower.close()


def test_follower_reads_in_commit_order_up_to_the_cutoff(logged, db_path):
    follower = LogFollower(db_path, "obd", "click")
    try:
        assert follower.log_exists()
        # d2 (rowid 3) is past the cutoff: d3 waits behind it although it is older.
        batch = follower.read(0, cutoff_time=T0 + 15, limit=100)
        assert [r.decision_id for r in batch.records] == ["d0", "d1"]
        assert [r.tolist() for r in batch.rewards] == [[2.0, 0.0], [0.0, 1.0]]
        assert (batch.through, batch.through_id, batch.scanned) == (2, "d1", 2)
        # Another use case's decision is scanned (the watermark passes it) but not returned.
        batch = follower.read(2, cutoff_time=T0 + 100, limit=100)
        assert [r.decision_id for r in batch.records] == ["d3"]
        assert (batch.through, batch.through_id, batch.scanned) == (4, "d3", 2)
        assert follower.read(4, cutoff_time=T0 + 100, limit=100).scanned == 0
        assert follower.decision_id_at(3) == "d2"
        assert follower.decision_id_at(99) is None
    finally:
        follower.close()


def test_follower_respects_the_limit_and_the_reward_kind(logged, db_path):
    follower = LogFollower(db_path, "obd", "spend")
    try:
        batch = follower.read(0, cutoff_time=T0 + 100, limit=2)
        assert batch.scanned == 2 and batch.through == 2
        assert [r.tolist() for r in batch.rewards] == [[0.0, 0.0], [12.5, 12.5]]
    finally:
        follower.close()
