"""Reading the log back: decisions with the feedback joined to them.

Two readers, both over their own connection to the SQLite file, so they run beside the
replicas' writers (WAL) and never write:

``read_decisions``
    One filtered snapshot (one read transaction) for reports and ``nudgeserve evaluate
    logs``: the decisions in log order and their joined feedback summed per
    ``(action, kind)``.
``LogFollower``
    Incremental reads in commit order for the online learner: every decision after a
    rowid watermark whose reward window has closed, with its per-slot reward.

Only *joined* feedback is read (the ``feedback`` table): orphaned, expired and rejected
events stay out, as in the Parquet export. A slot's reward is the summed value of the
events on its action plus those on the decision as a whole (``action`` None).
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from nudgeserve.serve.decisions._records import DecisionRecord

_record_decoder = msgspec.msgpack.Decoder(DecisionRecord)

_SQL_HAS_TABLES = (
    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN ('decisions', 'feedback')"
)
# Decisions after a rowid watermark, in commit order (rowids are assigned under the
# single write lock and decisions are never deleted).
_SQL_FOLLOW_DECISIONS = (
    "SELECT rowid, decision_id, time, record FROM decisions WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
# Walks the decisions of a rowid range and probes feedback by its primary key prefix.
_SQL_FOLLOW_REWARDS = (
    "SELECT d.decision_id, f.action, f.value FROM decisions AS d CROSS JOIN feedback AS f "
    "ON f.decision_id = d.decision_id WHERE d.rowid > ? AND d.rowid <= ? AND f.kind = ?"
)
_SQL_DECISION_ID_AT = "SELECT decision_id FROM decisions WHERE rowid = ?"


def _open_reader(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    # mode=rw, not ro: a read-only connection cannot read a WAL file that writers hold
    # open. Nothing here writes.
    uri = f"file:{Path(path).resolve().as_posix()}?mode=rw"
    return sqlite3.connect(
        uri,
        uri=True,
        isolation_level=None,
        timeout=busy_timeout_ms / 1000,
        check_same_thread=False,
    )


def _has_log_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute(_SQL_HAS_TABLES).fetchone()[0] == 2


def slot_rewards(
    actions: Sequence[str], feedback: Iterable[tuple[str | None, float]]
) -> np.ndarray:
    """float64[K]: each chosen slot's reward from ``(action, value)`` feedback rows of one
    decision (``action`` None counts on every slot; actions it did not choose, on none)."""
    slot_of = {a: s for s, a in enumerate(actions)}
    reward = np.zeros(len(actions))
    for action, value in feedback:
        if action is None:
            reward += value
        elif action in slot_of:
            reward[slot_of[action]] += value
    return reward


# ------------------------------------------------------------------- whole snapshots


@dataclass
class LoggedDecisions:
    """Decisions read from the log with their joined feedback.

    records: the decisions, in log order; feedback: per decision, ``(action, kind,
    summed value, events)`` rows (``action`` None: the decision as a whole).
    """

    records: list[DecisionRecord] = field(default_factory=list)
    feedback: dict[str, list[tuple[str | None, str, float, int]]] = field(default_factory=dict)

    def slot_rewards(self, kind: str) -> list[np.ndarray]:
        """Per decision, float64[K]: each slot's summed ``kind`` value (its action's
        events plus the decision-level ones), the export's ``reward``."""
        return [
            slot_rewards(
                rec.actions,
                (
                    (action, total)
                    for action, k, total, _ in self.feedback.get(rec.decision_id, ())
                    if k == kind
                ),
            )
            for rec in self.records
        ]

    def outcome_totals(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(events int64[n], value float64[n]) of ``kind`` per decision."""
        events = np.zeros(len(self.records), dtype=np.int64)
        value = np.zeros(len(self.records))
        for i, rec in enumerate(self.records):
            for _, k, total, count in self.feedback.get(rec.decision_id, ()):
                if k == kind:
                    events[i] += count
                    value[i] += total
        return events, value


def read_decisions(
    path: str | os.PathLike[str],
    *,
    use_case: str | None = None,
    experiment: str | None = None,
    since: float | None = None,
    until: float | None = None,
    busy_timeout_ms: int = 10_000,
) -> LoggedDecisions:
    """The logged decisions matching the filters (``since <= time < until``), with their
    joined feedback, from one snapshot of the log (one read transaction).

    Raises FileNotFoundError when ``path`` does not exist, ValueError when it is not a
    decision log.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no decision log at {path}")
    where, params = [], []
    if experiment is not None:
        where.append("experiment = ?")
        params.append(experiment)
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    if until is not None:
        where.append("time < ?")
        params.append(until)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    conn = _open_reader(path, busy_timeout_ms)
    try:
        conn.execute("BEGIN")
        if not _has_log_tables(conn):
            raise ValueError(f"{path} is not a decision log (no decisions table)")
        rows = conn.execute(
            f"SELECT record FROM decisions{clause} ORDER BY rowid", params
        ).fetchall()
        feedback_rows = conn.execute(
            "SELECT f.decision_id, f.action, f.kind, SUM(f.value), COUNT(*) "
            f"FROM (SELECT decision_id FROM decisions{clause}) AS d "
            "CROSS JOIN feedback AS f ON f.decision_id = d.decision_id "
            "GROUP BY f.decision_id, f.action, f.kind",
            params,
        ).fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    records = [_record_decoder.decode(r[0]) for r in rows]
    if use_case is not None:
        # use_case lives only inside the encoded record (no column): filtered here.
        records = [r for r in records if r.use_case == use_case]
    feedback: dict[str, list] = defaultdict(list)
    for decision_id, action, kind, total, count in feedback_rows:
        feedback[decision_id].append((action, kind, float(total), int(count)))
    return LoggedDecisions(records, dict(feedback))


# ---------------------------------------------------------------- following the log


class LogBatch(msgspec.Struct, frozen=True):
    """Decisions read from the log in rowid order, with their rewards per slot.

    records: the use case's decisions (other use cases' are skipped); rewards: one
    float64[K] per record; through: the last rowid read (of any use case), the
    ``after`` passed in when none; through_id: its decision id; scanned: decisions read
    (all use cases).
    """

    records: list[DecisionRecord]
    rewards: list[np.ndarray]
    through: int
    through_id: str
    scanned: int


class LogFollower:
    """Reads one use case's final decisions and their rewards, in commit order.

    path: the decision log's file; use_case: whose decisions are returned; reward_kind:
    the feedback ``kind`` summed into the rewards. A missing file or schema reads as
    empty (the log may not exist yet when the follower starts); the connection is opened
    on the first read that finds the log and kept until ``close``.
    """

    def __init__(
        self, path: str, use_case: str, reward_kind: str, busy_timeout_ms: int = 10_000
    ) -> None:
        self.path = path
        self.use_case = use_case
        self.reward_kind = reward_kind
        self.busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if not os.path.exists(self.path):
            return None
        conn = _open_reader(self.path, self.busy_timeout_ms)
        if not _has_log_tables(conn):
            conn.close()
            return None
        self._conn = conn
        return conn

    def log_exists(self) -> bool:
        """Whether the log's file exists (it may still lack its tables)."""
        return os.path.exists(self.path)

    def decision_id_at(self, rowid: int) -> str | None:
        """The decision id stored at ``rowid`` (None if none, or no log yet)."""
        conn = self._connect()
        if conn is None:
            return None
        row = conn.execute(_SQL_DECISION_ID_AT, (rowid,)).fetchone()
        return None if row is None else row[0]

    def read(self, after: int, cutoff_time: float, limit: int) -> LogBatch:
        """Decisions with rowid > ``after`` in rowid order, up to ``limit`` of them and
        stopping before the first whose time is after ``cutoff_time`` (its reward window
        is still open; later rowids wait for it, so a watermark never skips a row)."""
        conn = self._connect()
        if conn is None:
            return LogBatch([], [], after, "", 0)
        # One read transaction: the decisions and the feedback come from one snapshot.
        conn.execute("BEGIN")
        try:
            rows = conn.execute(_SQL_FOLLOW_DECISIONS, (after, limit)).fetchall()
            kept = []
            for row in rows:
                if row[2] > cutoff_time:
                    break
                kept.append(row)
            if not kept:
                return LogBatch([], [], after, "", 0)
            through, through_id = kept[-1][0], kept[-1][1]
            feedback = conn.execute(
                _SQL_FOLLOW_REWARDS, (after, through, self.reward_kind)
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        by_decision: dict[str, list[tuple[str | None, float]]] = {}
        for decision_id, action, value in feedback:
            by_decision.setdefault(decision_id, []).append((action, value))
        records, rewards = [], []
        for _, decision_id, _, blob in kept:
            record = _record_decoder.decode(blob)
            if record.use_case != self.use_case:
                continue
            records.append(record)
            rewards.append(slot_rewards(record.actions, by_decision.get(decision_id, ())))
        return LogBatch(records, rewards, through, through_id, len(kept))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
