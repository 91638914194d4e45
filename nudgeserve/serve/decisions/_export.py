"""Joined decisions + outcomes to Parquet: the file the off-policy evaluator reads.

One row per (decision, slot), in the layout of ``nudgeserve.models.evaluation.ope.OPE_LOG_COLUMNS``
(``decision_id``, ``action`` as an index into the row's candidates, ``position``,
``reward``, ``propensity``) plus what the log knows beyond it. Columns, in order:

=================  =======================  ===========================================
decision_id        string                   all slots of a decision share it
time               timestamp[us, UTC]       when the decision was made
unit_id            string                   randomization unit
experiment         string
variant            string
policy             string
model_version      string
action             int64                    index of the chosen action in ``candidates``
action_id          string                   the chosen action's id
position           int64                    the slot, 0 = first
score              float64                  model score of the action
propensity         float64                  P(logging policy puts it at ``position``)
reward             float64                  the ``reward_kind`` column (default click)
<kind> ...         float64                  one column per outcome kind (default
                                            ``click``, ``visit``, ``conversion``,
                                            ``spend``): the sum of ``value`` over the
                                            joined events of that kind for this slot's
                                            action, plus the decision-level events
                                            (``action`` None), which count on every slot
n_feedback         int32                    joined events counted in this row
candidates         list<string>             the decision's candidate set (same per slot)
features           list<float32>            the replay feature vector (same per slot)
<annotation> ...   list<float64>            optional, from ``annotate`` (see below)
=================  =======================  ===========================================

The evaluator also needs ``eval_probs`` (the evaluated policy's probability of each
candidate) and, for DM/DR, ``reward_hat``. The log cannot know them: they come from
replaying a policy or model over ``candidates`` and ``features``. ``annotate`` is that
hook: called per chunk with the decoded ``DecisionRecord`` list, it returns
``{column: rows}`` with one float sequence per exported row (decisions in order, each
decision's slots in position order), each as long as that row's ``candidates``.

Only joined feedback counts; orphaned, expired and rejected events stay in the
database. Decisions without feedback get 0.0 rewards. The export reads one snapshot
(one read transaction), so a log that is being written gives a consistent file, and
writes to a temporary name first so a reader never sees half a file. The schema's
metadata key ``nudgeserve.decision_log`` holds JSON: format version, outcome kinds,
reward kind, ``since``/``until`` and the export time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

from nudgeserve.serve.decisions._records import (
    BASE_COLUMNS,
    LEADING_COLUMNS,
    OUTCOME_KINDS,
    TRAILING_COLUMNS,
    DecisionRecord,
)
from nudgeserve.serve.decisions._schema import connect

EXPORT_FORMAT_VERSION = 1
METADATA_KEY = b"nudgeserve.decision_log"

# annotate(records) -> {column: one float sequence per exported row}
Annotator = Callable[[list[DecisionRecord]], Mapping[str, Sequence[Sequence[float]]]]

_record_decoder = msgspec.msgpack.Decoder(DecisionRecord)


class ExportSummary(msgspec.Struct, frozen=True):
    """What ``export_parquet`` wrote.

    path: the Parquet file. decisions: decisions exported. rows: rows written (one per
    slot). joined_events: feedback events counted. outcome_kinds: the per-kind reward
    columns. reward_kind: the kind copied into ``reward``. annotations: columns added
    by ``annotate``. since, until: the time bounds used (epoch seconds, None = open).
    """

    path: str
    decisions: int
    rows: int
    joined_events: int
    outcome_kinds: tuple[str, ...]
    reward_kind: str
    annotations: tuple[str, ...]
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
        raise TypeError(f"{name} must be epoch seconds or a datetime, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def arrow_schema(
    outcome_kinds: tuple[str, ...] = OUTCOME_KINDS, annotations: tuple[str, ...] = ()
) -> Any:
    """The export's pyarrow schema (without metadata)."""
    import pyarrow as pa

    fields = [
        ("decision_id", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("unit_id", pa.string()),
        ("experiment", pa.string()),
        ("variant", pa.string()),
        ("policy", pa.string()),
        ("model_version", pa.string()),
        ("use_case", pa.string()),
        ("model_checkpoint", pa.string()),
        ("action", pa.int64()),
        ("action_id", pa.string()),
        ("position", pa.int64()),
        ("score", pa.float64()),
        ("propensity", pa.float64()),
        ("reward", pa.float64()),
    ]
    fields += [(k, pa.float64()) for k in outcome_kinds]
    fields += [
        ("n_feedback", pa.int32()),
        ("candidates", pa.list_(pa.string())),
        ("features", pa.list_(pa.float32())),
    ]
    fields += [(a, pa.list_(pa.float64())) for a in annotations]
    return pa.schema([pa.field(n, t, nullable=False) for n, t in fields])


def _check_names(kinds: Any, reward_kind: Any) -> tuple[str, ...]:
    if isinstance(kinds, str) or not all(isinstance(k, str) and k.isidentifier() for k in kinds):
        raise ValueError(f"outcome_kinds must be identifier-like names, got {kinds!r}")
    clash = BASE_COLUMNS.intersection(kinds)
    if clash:
        raise ValueError(f"outcome_kinds {sorted(clash)} would clash with export columns")
    if reward_kind is not None and not isinstance(reward_kind, str):
        raise TypeError(f"reward_kind must be str or None, got {type(reward_kind).__name__}")
    return tuple(dict.fromkeys(kinds))


def export_parquet(
    database: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    since: float | datetime | None = None,
    until: float | datetime | None = None,
    outcome_kinds: tuple[str, ...] = OUTCOME_KINDS,
    reward_kind: str | None = None,
    annotate: Annotator | None = None,
    chunk_decisions: int = 20_000,
    busy_timeout_ms: int = 10_000,
) -> ExportSummary:
    """Write the decisions with ``since <= time < until`` and their joined outcomes.

    database: the decision log's SQLite file (may be in use by running writers).
    path: the Parquet file to (over)write.
    since, until: epoch seconds or aware datetimes; None leaves that side open. To
        export only decisions whose feedback window has closed, pass
        ``until = now - late_window_s``.
    outcome_kinds: per-kind reward columns always present; kinds found in the data are
        added after them.
    reward_kind: the kind copied into the ``reward`` column the evaluator reads;
        default ``"click"`` when present, else the first outcome kind.
    annotate: optional per-chunk hook adding list<float64> columns (``eval_probs``,
        ``reward_hat``, ...); see the module docstring.
    chunk_decisions: decisions per row group (bounds memory).
    """
    import pyarrow.parquet as pq

    lo, hi = _epoch(since, "since"), _epoch(until, "until")
    if lo is not None and hi is not None and hi <= lo:
        raise ValueError(f"until ({hi}) must be after since ({lo})")
    if (
        isinstance(chunk_decisions, bool)
        or not isinstance(chunk_decisions, int)
        or chunk_decisions < 1
    ):
        raise ValueError(f"chunk_decisions must be an integer >= 1, got {chunk_decisions!r}")
    outcome_kinds = _check_names(outcome_kinds, reward_kind)
    if annotate is not None and not callable(annotate):
        raise TypeError(f"annotate must be callable, got {type(annotate).__name__}")
    database, out = os.fspath(database), os.fspath(path)
    if not os.path.exists(database):
        raise FileNotFoundError(f"database: no decision log at {database!r}")

    conn = connect(database, busy_timeout_ms=busy_timeout_ms, readonly=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        conn.execute("BEGIN")  # one snapshot for every query below
        has = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'decisions'"
        ).fetchone()
        if not has:
            raise ValueError(f"database: {database!r} is not a decision log (no decisions table)")
        found = {r[0] for r in conn.execute("SELECT DISTINCT kind FROM feedback")}
        kinds = outcome_kinds + tuple(sorted(found - set(outcome_kinds)))
        if reward_kind is None:
            reward_kind = "click" if "click" in kinds else kinds[0]
        elif reward_kind not in kinds:
            raise ValueError(f"reward_kind {reward_kind!r} is not one of {kinds}")

        where, params = "", []
        if lo is not None:
            where += " AND d.time >= ?"
            params.append(lo)
        if hi is not None:
            where += " AND d.time < ?"
            params.append(hi)
        sql_decisions = (
            f"SELECT d.rowid, d.record FROM decisions AS d WHERE d.rowid > ?"
            f"{where} ORDER BY d.rowid LIMIT ?"
        )
        sql_feedback = (
            "SELECT f.decision_id, f.action, f.kind, SUM(f.value), COUNT(*) "
            "FROM decisions AS d CROSS JOIN feedback AS f "
            "ON f.decision_id = d.decision_id "
            f"WHERE d.rowid > ? AND d.rowid <= ?{where} "
            "GROUP BY f.decision_id, f.action, f.kind"
        )
        n_decisions = n_rows = n_events = 0
        after = 0
        writer = None
        annotations: tuple[str, ...] = ()
        meta = {
            "format": EXPORT_FORMAT_VERSION,
            "outcome_kinds": list(kinds),
            "reward_kind": reward_kind,
            "since": lo,
            "until": hi,
            "exported_at": time.time(),
        }
        try:
            while True:
                chunk = conn.execute(sql_decisions, (after, *params, chunk_decisions)).fetchall()
                if not chunk and writer is not None:
                    break
                fb: dict[str, list[tuple[str | None, str, float, int]]] = defaultdict(list)
                if chunk:
                    for did, action, kind, total, count in conn.execute(
                        sql_feedback, (after, chunk[-1][0], *params)
                    ):
                        fb[did].append((action, kind, total, count))
                records = [_record_decoder.decode(r[1]) for r in chunk]
                cols, events = _columns(records, fb, kinds, reward_kind)
                extra = _annotations(annotate, records, cols, kinds) if annotate else {}
                if writer is None:
                    annotations = tuple(extra)
                    meta["annotations"] = list(annotations)
                    schema = arrow_schema(kinds, annotations).with_metadata(
                        {METADATA_KEY: json.dumps(meta).encode()}
                    )
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                elif tuple(extra) != annotations:
                    raise ValueError(
                        f"annotate returned columns {list(extra)} for one chunk "
                        f"and {list(annotations)} for another"
                    )
                cols.update(extra)
                table = _table(cols, schema)
                writer.write_table(table)
                n_decisions += len(chunk)
                n_rows += table.num_rows
                n_events += events
                if not chunk:
                    break
                after = chunk[-1][0]
        finally:
            if writer is not None:
                writer.close()
        conn.execute("COMMIT")
        os.replace(tmp, out)
    finally:
        conn.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportSummary(
        path=out,
        decisions=n_decisions,
        rows=n_rows,
        joined_events=n_events,
        outcome_kinds=kinds,
        reward_kind=reward_kind,
        annotations=annotations,
        since=lo,
        until=hi,
    )


def _columns(
    records: list[DecisionRecord], fb: dict, kinds: tuple[str, ...], reward_kind: str
) -> tuple[dict[str, list], int]:
    names = [*LEADING_COLUMNS, *kinds, *TRAILING_COLUMNS]
    cols: dict[str, list] = {n: [] for n in names}
    rewards = [cols[k] for k in kinds]
    kind_index = {k: i for i, k in enumerate(kinds)}
    reward_i = kind_index[reward_kind]
    n_events = 0
    for rec in records:
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
            cols["use_case"].append(rec.use_case)
            cols["model_checkpoint"].append(rec.model_checkpoint)
            cols["action"].append(rec.candidates.index(action))
            cols["action_id"].append(action)
            cols["position"].append(pos)
            cols["score"].append(rec.scores[pos])
            cols["propensity"].append(rec.propensities[pos])
            own = per_action.get(action)
            values = [
                (own[i] if own else 0.0) + (shared[i] if shared else 0.0) for i in range(len(kinds))
            ]
            for col, v in zip(rewards, values, strict=True):
                col.append(v)
            cols["reward"].append(values[reward_i])
            cols["n_feedback"].append(counts.get(action, 0) + counts.get(None, 0))
            cols["candidates"].append(rec.candidates)
            cols["features"].append(rec.features)
    return cols, n_events


def _annotations(
    annotate: Annotator,
    records: list[DecisionRecord],
    cols: dict[str, list],
    kinds: tuple[str, ...],
) -> dict[str, list]:
    extra = annotate(records)
    if not isinstance(extra, Mapping):
        raise TypeError(
            f"annotate must return a mapping of column -> rows, got {type(extra).__name__}"
        )
    taken = BASE_COLUMNS.union(kinds)
    out = {}
    n_rows = len(cols["decision_id"])
    for name, rows in extra.items():
        if not isinstance(name, str) or not name.isidentifier() or name in taken:
            raise ValueError(f"annotate: column name {name!r} is invalid or already taken")
        rows = list(rows)
        if len(rows) != n_rows:
            raise ValueError(
                f"annotate: column {name!r} has {len(rows)} rows; the chunk has "
                f"{n_rows} (one per decision slot)"
            )
        for i, (row, cands) in enumerate(zip(rows, cols["candidates"], strict=True)):
            if len(row) != len(cands):
                raise ValueError(
                    f"annotate: {name}[{i}] has {len(row)} values; its row has "
                    f"{len(cands)} candidates"
                )
        out[name] = [list(map(float, r)) for r in rows]
    return out


def _table(cols: dict[str, list], schema: Any) -> Any:
    import pyarrow as pa

    arrays = [pa.array(cols[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON metadata ``export_parquet`` stored in a file's schema."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(os.fspath(path)).metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"path: {os.fspath(path)!r} was not written by export_parquet")
    return json.loads(meta[METADATA_KEY])
