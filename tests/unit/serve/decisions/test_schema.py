"""Schema creation, the migrations version table, WAL mode."""

from __future__ import annotations

import sqlite3

import pytest

from nudgeserve.serve.decisions import SCHEMA_VERSION, SchemaVersionError
from nudgeserve.serve.decisions._schema import MIGRATIONS, connect, migrate, schema_version

from .conftest import query


def test_open_creates_schema_in_wal_mode(open_log, db_path):
    open_log()
    assert query(db_path, "PRAGMA journal_mode")[0][0] == "wal"
    tables = {r[0] for r in query(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"decisions", "feedback", "orphan_feedback", "schema_version"} <= tables
    assert query(db_path, "SELECT MAX(version) FROM schema_version")[0][0] == SCHEMA_VERSION


def test_reopening_does_not_reapply_migrations(open_log, db_path):
    open_log().close()
    open_log().close()
    assert query(db_path, "SELECT COUNT(*) FROM schema_version")[0][0] == len(MIGRATIONS)


def test_newer_file_is_refused(open_log, db_path):
    open_log().close()
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO schema_version VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match=f"version is {SCHEMA_VERSION + 1}"):
        open_log()


def test_a_new_migration_is_applied_once_to_an_old_file(db_path):
    conn = connect(db_path)
    assert schema_version(conn) == 0
    assert migrate(conn) == SCHEMA_VERSION
    extra = (
        *MIGRATIONS,
        (SCHEMA_VERSION + 1, ("ALTER TABLE decisions ADD COLUMN region TEXT NOT NULL DEFAULT ''",)),
    )
    assert migrate(conn, extra) == SCHEMA_VERSION + 1
    assert migrate(conn, extra) == SCHEMA_VERSION + 1  # no second ALTER (it would fail)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(decisions)")]
    assert cols.count("region") == 1
    conn.close()


def test_failed_migration_leaves_the_old_schema(db_path):
    conn = connect(db_path)
    migrate(conn)
    broken = (*MIGRATIONS, (SCHEMA_VERSION + 1, ("CREATE TABLE extra (x)", "THIS IS NOT SQL")))
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    assert schema_version(conn) == SCHEMA_VERSION
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    conn.close()
