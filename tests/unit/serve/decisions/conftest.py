"""Fixtures for the decision-log tests: a real SQLite file per test, helpers to read it."""

from __future__ import annotations

import sqlite3

import pytest

from nudgeserve.serve.decisions import DecisionLog


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "decisions.db")


@pytest.fixture
def open_log(db_path):
    """Open DecisionLogs on the test's file; every one is closed after the test."""
    opened = []

    def _open(path=None, **settings):
        lg = DecisionLog(path or db_path, **settings)
        opened.append(lg)
        return lg

    yield _open
    for lg in opened:
        lg.close()


def query(path, sql, params=()):
    """Rows from an independent connection, as another process would see them."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def stored_ids(path):
    return {r[0] for r in query(path, "SELECT decision_id FROM decisions")}
