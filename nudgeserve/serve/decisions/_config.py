"""Settings of the decision log, checked when built (from Python, YAML or env)."""

from __future__ import annotations

import math
from typing import Literal

import msgspec

from nudgeserve.serve.decisions._errors import InvalidDecisionLogConfig
from nudgeserve.serve.decisions._records import BASE_COLUMNS, MAX_ID_LENGTH, OUTCOME_KINDS

DURABILITY = ("commit", "enqueue")
SYNCHRONOUS = ("NORMAL", "FULL")


class DecisionLogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the decision log writes.

    path: the SQLite file (created with its schema when missing).
    durability: ``"commit"``: ``append`` returns once the group commit holding the record
        is in the database, so an acknowledged decision survives the process being killed
        (SIGKILL included). ``"enqueue"``: ``append`` returns once the record is queued in
        memory; it is written within ``max_delay_ms`` plus one commit, and on orderly
        shutdown (``close()``, SIGTERM through ``install_sigterm_handler``, interpreter
        exit) but is lost if the process is killed or crashes before that.
    synchronous: SQLite's ``PRAGMA synchronous`` in WAL mode. ``"NORMAL"``: a commit
        survives a process crash but the last commits may roll back on power loss or an
        OS crash. ``"FULL"``: the WAL is fsynced at each commit, durable against power loss
        (each group commit then costs one fsync).
    max_batch: the writer commits after this many records ... (N)
    max_delay_ms: ... or this long after the first record of a batch arrived (T),
        whichever comes first. 0 means commit whatever is queued at once; records that
        arrive during a commit form the next batch (batches still grow under load).
    max_queue: append calls that may wait for the writer; past it ``append`` raises
        ``DecisionLogOverloaded`` at once (shed load: HTTP 503) instead of queueing
        without bound.
    late_window_s: feedback whose event time is more than this after its decision's time
        is kept but not joined (status ``expired``).
    busy_timeout_ms: how long a write waits for another process's write lock.
    close_timeout_s: how long ``close()`` waits for the writer to drain.
    outcome_kinds: the feedback kinds accepted; each is a reward column in exports.
    """

    path: str
    durability: Literal["commit", "enqueue"] = "commit"
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    max_batch: int = 1024
    max_delay_ms: float = 0.0
    max_queue: int = 50_000
    late_window_s: float = 7 * 24 * 3600.0
    busy_timeout_ms: int = 10_000
    close_timeout_s: float = 60.0
    outcome_kinds: tuple[str, ...] = OUTCOME_KINDS

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> InvalidDecisionLogConfig:
            return InvalidDecisionLogConfig(
                f"decision_log.{name} is {getattr(self, name)!r}; {allowed}"
            )

        if not isinstance(self.path, str) or not self.path:
            raise bad("path", "must be a non-empty file path")
        if self.durability not in DURABILITY:
            raise bad("durability", f"must be one of {DURABILITY}")
        if self.synchronous not in SYNCHRONOUS:
            raise bad("synchronous", f"must be one of {SYNCHRONOUS}")
        for name in ("max_batch", "max_queue", "busy_timeout_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be an integer >= 1")
        for name in ("max_delay_ms", "late_window_s", "close_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, "must be a finite number")
            if v < 0:
                raise bad(name, "must be >= 0")
        if self.max_delay_ms > 10_000:
            raise bad("max_delay_ms", "must be <= 10000 (a decision waits this long)")
        kinds = self.outcome_kinds
        if not isinstance(kinds, tuple) or not kinds:
            raise bad("outcome_kinds", "must be a non-empty list of names")
        for k in kinds:
            if not isinstance(k, str) or not k.isidentifier() or len(k) > MAX_ID_LENGTH:
                raise bad("outcome_kinds", f"each must be an identifier-like name, got {k!r}")
        if len(set(kinds)) != len(kinds):
            raise bad("outcome_kinds", "must not repeat a name")
        clash = BASE_COLUMNS.intersection(kinds)
        if clash:
            raise bad("outcome_kinds", f"{sorted(clash)} would clash with export columns")
