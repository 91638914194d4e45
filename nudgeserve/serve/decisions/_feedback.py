"""Idempotent feedback ingestion and the late join of orphaned events.

Both functions run inside the writer's ``BEGIN IMMEDIATE`` transaction: holding SQLite's
write lock while deciding "decision known?" and inserting is what makes the outcome
exact across replica processes. Either the decision's transaction commits first (the
event sees it and joins) or the orphan's does (the decision's ``rejoin_orphans`` sees
the orphan and joins it); no interleaving leaves an event orphaned next to its decision.

Tables (see ``_store.MIGRATIONS``): ``feedback`` holds joined events, primary key
``(decision_id, event_id)``; ``orphan_feedback`` holds every event that was kept but not
joined, with ``reason``: ``unknown_decision`` (waiting for its decision), ``expired``
(after the late window) or ``unknown_action`` (names an action the decision did not
choose).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from nudgeserve.serve.decisions._records import FeedbackResult

# (decision_id, event_id, kind, value, time, action, received_at): what the producer
# thread hands the writer, already validated, with time filled in.
EventRow = tuple[str, str, str, float, float, str | None, float]

_actions_decoder = msgspec.msgpack.Decoder(list[str])

_SQL_SEEN = (
    "SELECT 'joined' FROM feedback WHERE decision_id = ?1 AND event_id = ?2 "
    "UNION ALL SELECT reason FROM orphan_feedback WHERE decision_id = ?1 AND event_id = ?2"
)
_SQL_DECISION = "SELECT time, actions FROM decisions WHERE decision_id = ?"
_SQL_JOIN = (
    "INSERT OR IGNORE INTO feedback "
    "(decision_id, event_id, kind, value, time, action, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SQL_KEEP = (
    "INSERT OR IGNORE INTO orphan_feedback "
    "(decision_id, event_id, kind, value, time, action, received_at, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# CROSS JOIN pins the loop order: walk only the decisions this transaction inserted
# (a rowid range) and probe the orphan table by primary key; the orphan table may hold
# many events that will never find a decision, and must not be scanned per batch.
_SQL_REJOIN = (
    "SELECT o.decision_id, o.event_id, o.kind, o.value, o.time, o.action, o.received_at, "
    "d.time, d.actions FROM decisions AS d CROSS JOIN orphan_feedback AS o "
    "ON o.decision_id = d.decision_id "
    "WHERE d.rowid > ? AND o.reason = 'unknown_decision'"
)


def _classify(
    ev: EventRow, decision_time: float, actions_blob: bytes, late_window_s: float
) -> tuple[str, str]:
    """(status, reason-or-detail) for an event whose decision is known."""
    if ev[4] > decision_time + late_window_s:
        return "expired", (
            f"event time is {ev[4] - decision_time:.0f}s after the decision; "
            f"the late window is {late_window_s:.0f}s"
        )
    action = ev[5]
    if action is not None and action not in _actions_decoder.decode(actions_blob):
        return "rejected", f"action {action!r} was not chosen by decision {ev[0]!r}"
    return "joined", ""


_REASON = {"expired": "expired", "rejected": "unknown_action", "orphaned": "unknown_decision"}


def apply_feedback(
    conn: sqlite3.Connection, events: Sequence[EventRow], late_window_s: float
) -> list[FeedbackResult]:
    """Store each event once and say what happened to it, in order.

    Must run inside a write transaction. Events later in ``events`` see the effects of
    earlier ones, so a repeat within one call is a ``duplicate`` too.
    """
    results = []
    for ev in events:
        did, eid = ev[0], ev[1]
        seen = conn.execute(_SQL_SEEN, (did, eid)).fetchone()
        if seen is not None:
            where = "joined" if seen[0] == "joined" else f"kept aside ({seen[0]})"
            results.append(
                FeedbackResult(did, eid, "duplicate", f"event already received and {where}")
            )
            continue
        dec = conn.execute(_SQL_DECISION, (did,)).fetchone()
        if dec is None:
            status, detail = (
                "orphaned",
                (
                    f"no decision {did!r}; the event is kept and will "
                    "be joined if the decision is logged"
                ),
            )
        else:
            status, detail = _classify(ev, dec[0], dec[1], late_window_s)
        if status == "joined":
            conn.execute(_SQL_JOIN, ev)
        else:
            conn.execute(_SQL_KEEP, (*ev, _REASON[status]))
        results.append(FeedbackResult(did, eid, status, detail))
    return results


def rejoin_orphans(conn: sqlite3.Connection, after_rowid: int, late_window_s: float) -> int:
    """Join the waiting orphans of decisions with ``rowid > after_rowid``.

    Must run in the write transaction that inserted those decisions. Orphans outside
    the late window, or naming an action the decision did not choose, stay in
    ``orphan_feedback`` with that reason. Returns how many events were joined.
    """
    rows = conn.execute(_SQL_REJOIN, (after_rowid,)).fetchall()
    joined = 0
    for r in rows:
        ev: EventRow = r[:7]
        status, _ = _classify(ev, r[7], r[8], late_window_s)
        if status == "joined":
            conn.execute(_SQL_JOIN, ev)
            conn.execute(
                "DELETE FROM orphan_feedback WHERE decision_id = ? AND event_id = ?", (ev[0], ev[1])
            )
            joined += 1
        else:
            conn.execute(
                "UPDATE orphan_feedback SET reason = ? WHERE decision_id = ? AND event_id = ?",
                (_REASON[status], ev[0], ev[1]),
            )
    return joined
