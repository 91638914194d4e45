"""Errors raised by the decision log.

Each also subclasses the matching builtin so that callers that only know ``ValueError``,
``TypeError`` or ``RuntimeError`` still catch them; the server turns them into HTTP
statuses in its one error-mapping function (see README.md beside this file).
"""

from __future__ import annotations


class DecisionLogError(Exception):
    """Root of every error raised by ``nudgeserve.serve.decisions``."""


class InvalidDecisionLogConfig(DecisionLogError, ValueError):
    """A setting is out of range or not one of the allowed values; the message names it."""


class InvalidDecisionRecord(DecisionLogError, ValueError):
    """A decision record has a bad value (empty id, lengths differ, propensity outside
    (0, 1], ...); the message names the field. Nothing was written."""


class InvalidDecisionRecordType(DecisionLogError, TypeError):
    """A decision record field has the wrong type; the message names the field."""


class InvalidFeedback(DecisionLogError, ValueError):
    """A feedback event has a bad value (unknown kind, non-finite value, ...); the message
    names the field. Nothing was written."""


class InvalidFeedbackType(DecisionLogError, TypeError):
    """A feedback event field has the wrong type; the message names the field."""


class DecisionLogOverloaded(DecisionLogError, RuntimeError):
    """The writer's queue is full: the caller should shed load (HTTP 503 + Retry-After).
    The record was not accepted, so it is not the log's to keep."""


class DecisionLogClosed(DecisionLogError, RuntimeError):
    """The log is closed or closing; the record was not accepted."""


class DecisionLogWriteError(DecisionLogError, RuntimeError):
    """SQLite refused a write that was not a transient lock. In ``commit`` durability the
    caller gets this instead of an acknowledgement; records already acknowledged
    (``enqueue`` durability) are spilled to a side file and re-imported at the next open."""


class SchemaVersionError(DecisionLogError, RuntimeError):
    """The database was written by a newer nudgeserve (its schema version is unknown here)."""
