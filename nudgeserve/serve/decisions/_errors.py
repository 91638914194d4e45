"""Errors raised by the decision log, in the server's one exception tree.

Each is a ``NudgeError`` and subclasses the builtin it means, so ``http_error`` maps it
without knowing this package: bad feedback is an ``InvalidRequest`` (400), a full queue
an ``Overloaded`` (503 + Retry-After), a closed log ``NotReady`` (503). A bad
``DecisionRecord`` is the server's own bug, not the client's, so it stays a plain
``ValueError``/``TypeError`` (500).
"""

from __future__ import annotations

from nudgeserve.serve.errors import ConfigError, InvalidRequest, NotReady, NudgeError, Overloaded


class DecisionLogError(NudgeError):
    """Root of every error raised by ``nudgeserve.serve.decisions``."""


class InvalidDecisionLogConfig(DecisionLogError, ConfigError):
    """A setting is out of range or not one of the allowed values; the message names it."""


class InvalidDecisionRecord(DecisionLogError, ValueError):
    """A decision record has a bad value (empty id, lengths differ, propensity outside
    (0, 1], ...); the message names the field. Nothing was written."""


class InvalidDecisionRecordType(DecisionLogError, TypeError):
    """A decision record field has the wrong type; the message names the field."""


class InvalidFeedback(DecisionLogError, InvalidRequest):
    """A feedback event has a bad value (unknown kind, non-finite value, ...); the message
    names the field. Nothing was written."""


class InvalidFeedbackType(DecisionLogError, InvalidRequest, TypeError):
    """A feedback event field has the wrong type; the message names the field."""


class DecisionLogOverloaded(DecisionLogError, Overloaded):
    """The writer's queue is full: the caller should shed load (HTTP 503 + Retry-After).
    The record was not accepted, so it is not the log's to keep."""


class DecisionLogClosed(DecisionLogError, NotReady):
    """The log is closed or closing; the record was not accepted."""


class DecisionLogWriteError(DecisionLogError, RuntimeError):
    """SQLite refused a write that was not a transient lock. In ``commit`` durability the
    caller gets this instead of an acknowledgement; records already acknowledged
    (``enqueue`` durability) are spilled to a side file and re-imported at the next open."""


class SchemaVersionError(DecisionLogError, RuntimeError):
    """The database was written by a newer nudgeserve (its schema version is unknown here)."""
