"""The SQLite file: connection settings, schema, migrations and the side-file format.

Every process (each replica, the export command) opens its own connections; WAL mode
lets readers run beside the single write lock, and ``busy_timeout`` makes a second
process's writer wait for that lock instead of failing.

Migrations: ``MIGRATIONS`` lists ``(version, statements)``; ``migrate`` applies the ones
newer than the ``schema_version`` table's maximum inside one ``BEGIN IMMEDIATE``
transaction (SQLite DDL is transactional), so two processes opening a new file at once
cannot both apply them and a failed migration leaves the old schema intact. Append new
versions; never edit a shipped one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from nudgeserve.serve.decisions._errors import SchemaVersionError

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            # record: the whole DecisionRecord as msgpack (its array_like layout); the
            # scalar columns beside it are copies for filtering and for humans with sqlite3.
            # actions: msgpack str[K], read on every feedback event without decoding record.
            """CREATE TABLE decisions (
            decision_id   TEXT PRIMARY KEY,
            time          REAL NOT NULL,
            unit_id       TEXT NOT NULL,
            experiment    TEXT NOT NULL,
            variant       TEXT NOT NULL,
            policy        TEXT NOT NULL,
            model_version TEXT NOT NULL,
            actions       BLOB NOT NULL,
            record        BLOB NOT NULL
        )""",
            "CREATE INDEX decisions_time ON decisions (time)",
            """CREATE TABLE feedback (
            decision_id TEXT NOT NULL,
            event_id    TEXT NOT NULL,
            kind        TEXT NOT NULL,
            value       REAL NOT NULL,
            time        REAL NOT NULL,
            action      TEXT,
            received_at REAL NOT NULL,
            PRIMARY KEY (decision_id, event_id)
        ) WITHOUT ROWID""",
            """CREATE TABLE orphan_feedback (
            decision_id TEXT NOT NULL,
            event_id    TEXT NOT NULL,
            kind        TEXT NOT NULL,
            value       REAL NOT NULL,
            time        REAL NOT NULL,
            action      TEXT,
            received_at REAL NOT NULL,
            reason      TEXT NOT NULL
                CHECK (reason IN ('unknown_decision', 'expired', 'unknown_action')),
            PRIMARY KEY (decision_id, event_id)
        ) WITHOUT ROWID""",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1][0]

INSERT_DECISION = (
    "INSERT OR IGNORE INTO decisions (decision_id, time, unit_id, experiment, variant, "
    "policy, model_version, actions, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# A stored decision row, as the producer builds it (see DecisionLog._row).
DecisionRow = tuple[str, float, str, str, str, str, str, bytes, bytes]

T = TypeVar("T")


def is_busy(exc: BaseException) -> bool:
    """True for SQLite's "another connection holds the lock" errors (worth a retry)."""
    name = getattr(exc, "sqlite_errorname", "")
    return isinstance(exc, sqlite3.OperationalError) and (
        name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
        or "locked" in str(exc)
        or "busy" in str(exc)
    )


def retry_busy(fn: Callable[[], T], attempts: int = 50, pause_s: float = 0.02) -> T:
    """Run ``fn``, retrying busy errors that SQLite's own busy handler does not cover
    (changing the journal mode, for one, does not wait)."""
    for i in range(attempts):
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or i == attempts - 1:
                raise
            time.sleep(pause_s * (1 + i % 5))
    raise AssertionError("unreachable")


def connect(
    path: str, synchronous: str = "NORMAL", busy_timeout_ms: int = 10_000, readonly: bool = False
) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with autocommit (transactions are explicit BEGINs)."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            isolation_level=None,
            timeout=busy_timeout_ms / 1000,
            check_same_thread=False,
        )
    else:
        conn = sqlite3.connect(
            path, isolation_level=None, timeout=busy_timeout_ms / 1000, check_same_thread=False
        )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if not readonly:
            mode = retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(
                    f"{path}: SQLite refused WAL mode (got {mode!r}); the decision log needs "
                    "a local file system"
                )
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    except BaseException:
        conn.close()
        raise
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for a new file."""
    has = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def migrate(
    conn: sqlite3.Connection, migrations: Sequence[tuple[int, Sequence[str]]] = MIGRATIONS
) -> int:
    """Bring the file to the newest schema; return its version.

    Raises ``SchemaVersionError`` when the file is newer than ``migrations`` knows.
    """
    latest = migrations[-1][0]
    retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = schema_version(conn)
        if current > latest:
            raise SchemaVersionError(
                f"decision log schema version is {current}; this nudgeserve knows up to "
                f"{latest}: upgrade nudgeserve to open it"
            )
        for version, statements in migrations:
            if version <= current:
                continue
            for sql in statements:
                conn.execute(sql)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(current, latest)
