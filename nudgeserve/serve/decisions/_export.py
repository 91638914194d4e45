"""Joined decisions + outcomes to Parquet: the file the off-policy evaluator reads.

One row per (decision, slot). Columns, in order:

=================  =======================  ===========================================
decision_id        string
time               timestamp[us, UTC]       when the decision was made
unit_id            string                   randomization unit
experiment         string
variant            string
policy             string
model_version      string
action             string                   the action chosen for this slot
position           int32                    the slot, 0 = first
score              float64                  model score of ``action``
propensity         float64                  P(policy puts ``action`` at ``position``)
<kind> ...         float64                  one column per outcome kind (default
                                            ``click``, ``visit``, ``conversion``,
                                            ``spend``): the sum of ``value`` over the
                                            joined events of that kind for this slot's
                                            action, plus the decision-level events
                                            (``action`` None), which count on every slot
n_feedback         int32                    joined events counted in this row
candidates         list<string>             the decision's candidate set (same per slot)
features           list<float32>            the replay feature vector (same per slot)
=================  =======================  ===========================================

Only joined feedback counts; orphaned, expired and rejected events stay in the
database. Decisions without feedback get 0.0 rewards. The export reads one snapshot
(one read transaction), so a log that is being written gives a consistent file, and
writes to a temporary name first so a reader never sees half a file. The schema's
metadata key ``nudgeserve.decision_log`` holds JSON: format version, outcome kinds,
``since``/``until`` and the export time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import msgspec

from ._records import BASE_COLUMNS, OUTCOME_KINDS, DecisionRecord
from ._schema import connect

EXPORT_FORMAT_VERSION = 1
METADATA_KEY = b"nudgeserve.decision_log"

_record_decoder = msgspec.msgpack.Decoder(DecisionRecord)


class ExportSummary(msgspec.Struct, frozen=True):
    """What ``export_parquet`` wrote.

    path: the Parquet file. decisions: decisions exported. rows: rows written (one per
    slot). joined_events: feedback events counted. outcome_kinds: the reward columns.
    since, until: the time bounds used (epoch seconds, None = open).
    """

    path: str
    decisions: int
    rows: int
    joined_events: int
    outcome_kinds: tuple[str, ...]
    since: float | None
    until: float | None


def _epoch(value: float | datetime | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} is a naive datetime; give a time zone (e.g. UTC)")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be epoch seconds or a datetime, "
                        f"got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def arrow_schema(outcome_kinds: tuple[str, ...]) -> Any:
    """The export's pyarrow schema for these outcome kinds (without metadata)."""
    import pyarrow as pa

    fields = [
        ("decision_id", pa.string()), ("time", pa.timestamp("us", tz="UTC")),
        ("unit_id", pa.string()), ("experiment", pa.string()), ("variant", pa.string()),
        ("policy", pa.string()), ("model_version", pa.string()), ("action", pa.string()),
        ("position", pa.int32()), ("score", pa.float64()), ("propensity", pa.float64()),
    ]
    fields += [(k, pa.float64()) for k in outcome_kinds]
    fields += [("n_feedback", pa.int32()), ("candidates", pa.list_(pa.string())),
               ("features", pa.list_(pa.float32()))]
    return pa.schema([pa.field(n, t, nullable=False) for n, t in fields])


def export_parquet(database: str | os.PathLike[str], path: str | os.PathLike[str], *,
                   since: float | datetime | None = None,
                   until: float | datetime | None = None,
                   outcome_kinds: tuple[str, ...] = OUTCOME_KINDS,
                   chunk_decisions: int = 20_000,
                   busy_timeout_ms: int = 10_000) -> ExportSummary:
    """Write the decisions with ``since <= time < until`` and their joined outcomes.

    database: the decision log's SQLite file (may be in use by running writers).
    path: the Parquet file to (over)write.
    since, until: epoch seconds or aware datetimes; None leaves that side open. To
        export only decisions whose feedback window has closed, pass
        ``until = now - late_window_s``.
    outcome_kinds: reward columns always present; kinds found in the data are added.
    chunk_decisions: decisions per row group (bounds memory).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    lo, hi = _epoch(since, "since"), _epoch(until, "until")
    if lo is not None and hi is not None and hi <= lo:
        raise ValueError(f"until ({hi}) must be after since ({lo})")
    if isinstance(chunk_decisions, bool) or not isinstance(chunk_decisions, int) \
            or chunk_decisions < 1:
        raise ValueError(f"chunk_decisions must be an integer >= 1, got {chunk_decisions!r}")
    if isinstance(outcome_kinds, str) or not all(
            isinstance(k, str) and k.isidentifier() for k in outcome_kinds):
        raise ValueError(f"outcome_kinds must be identifier-like names, got {outcome_kinds!r}")
    if BASE_COLUMNS.intersection(outcome_kinds):
        raise ValueError(f"outcome_kinds {sorted(BASE_COLUMNS.intersection(outcome_kinds))} "
                         "would clash with export columns")
    database, out = os.fspath(database), os.fspath(path)
    if not os.path.exists(database):
        raise FileNotFoundError(f"database: no decision log at {database!r}")

    conn = connect(database, busy_timeout_ms=busy_timeout_ms, readonly=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        conn.execute("BEGIN")  # one snapshot for every query below
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                           "AND name = 'decisions'").fetchone()
        if not has:
            raise ValueError(f"database: {database!r} is not a decision log (no decisions table)")
        found = [r[0] for r in conn.execute("SELECT DISTINCT kind FROM feedback")]
        kinds = tuple(dict.fromkeys(outcome_kinds)) + tuple(sorted(set(found) - set(outcome_kinds)))
        meta = {"format": EXPORT_FORMAT_VERSION, "outcome_kinds": list(kinds),
                "since": lo, "until": hi, "exported_at": time.time()}
        schema = arrow_schema(kinds).with_metadata({METADATA_KEY: json.dumps(meta).encode()})

        where, params = "", []
        if lo is not None:
            where += " AND d.time >= ?"
            params.append(lo)
        if hi is not None:
            where += " AND d.time < ?"
            params.append(hi)
        sql_decisions = (f"SELECT d.rowid, d.record FROM decisions AS d WHERE d.rowid > ?"
                         f"{where} ORDER BY d.rowid LIMIT ?")
        sql_feedback = ("SELECT f.decision_id, f.action, f.kind, SUM(f.value), COUNT(*) "
                        "FROM decisions AS d CROSS JOIN feedback AS f "
                        "ON f.decision_id = d.decision_id "
                        f"WHERE d.rowid > ? AND d.rowid <= ?{where} "
                        "GROUP BY f.decision_id, f.action, f.kind")
        n_decisions = n_rows = n_events = 0
        after = 0
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            while True:
                chunk = conn.execute(sql_decisions, (after, *params, chunk_decisions)).fetchall()
                if not chunk:
                    break
                last = chunk[-1][0]
                fb: dict[str, list[tuple[str | None, str, float, int]]] = defaultdict(list)
                for did, action, kind, total, count in conn.execute(
                        sql_feedback, (after, last, *params)):
                    fb[did].append((action, kind, total, count))
                table, rows, events = _chunk_table([r[1] for r in chunk], fb, kinds, schema)
                writer.write_table(table)
                n_decisions += len(chunk)
                n_rows += rows
                n_events += events
                after = last
        conn.execute("COMMIT")
        os.replace(tmp, out)
    finally:
        conn.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportSummary(path=out, decisions=n_decisions, rows=n_rows, joined_events=n_events,
                         outcome_kinds=kinds, since=lo, until=hi)


def _chunk_table(blobs: list[bytes], fb: dict, kinds: tuple[str, ...], schema: Any
                 ) -> tuple[Any, int, int]:
    import pyarrow as pa

    cols: dict[str, list] = {f.name: [] for f in schema}
    rewards = [cols[k] for k in kinds]
    kind_index = {k: i for i, k in enumerate(kinds)}
    n_events = 0
    for blob in blobs:
        rec = _record_decoder.decode(blob)
        # Sum per (action, kind); action None = decision-level, counted on every slot.
        per_action: dict[str | None, list[float]] = {}
        counts: dict[str | None, int] = {}
        for action, kind, total, count in fb.get(rec.decision_id, ()):
            per_action.setdefault(action, [0.0] * len(kinds))[kind_index[kind]] += total
            counts[action] = counts.get(action, 0) + count
        n_events += sum(counts.values())
        shared = per_action.get(None)
        t_us = round(rec.time * 1e6)
        for pos, action in enumerate(rec.actions):
            cols["decision_id"].append(rec.decision_id)
            cols["time"].append(t_us)
            cols["unit_id"].append(rec.unit_id)
            cols["experiment"].append(rec.experiment)
            cols["variant"].append(rec.variant)
            cols["policy"].append(rec.policy)
            cols["model_version"].append(rec.model_version)
            cols["action"].append(action)
            cols["position"].append(pos)
            cols["score"].append(rec.scores[pos])
            cols["propensity"].append(rec.propensities[pos])
            own = per_action.get(action)
            for i, col in enumerate(rewards):
                col.append((own[i] if own else 0.0) + (shared[i] if shared else 0.0))
            cols["n_feedback"].append(counts.get(action, 0) + counts.get(None, 0))
            cols["candidates"].append(rec.candidates)
            cols["features"].append(rec.features)
    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    table = pa.Table.from_arrays(arrays, schema=schema)
    return table, table.num_rows, n_events


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata ``export_parquet`` stored in a file's schema."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(os.fspath(path)).metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"path: {os.fspath(path)!r} was not written by export_parquet")
    return json.loads(meta[METADATA_KEY])

