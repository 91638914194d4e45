"""``DecisionLog``: the durable decision log and feedback join over one SQLite file.

Durability contract (``DecisionLogConfig.durability``):

``"commit"`` (default)
    ``append`` / ``await append_async`` return only after the group commit that holds the
    record is in the database. Respond to the client after that, and an acknowledged
    decision survives the server process being killed in any way (SIGKILL, OOM, crash);
    with ``synchronous="FULL"`` it also survives power loss or an OS crash (with
    ``"NORMAL"``, the default, the last commits may roll back then). The price is the
    wait for one group commit, which concurrent requests share.
``"enqueue"``
    ``append`` returns once the record is queued; the writer commits it within
    ``max_delay_ms`` plus one commit. Acknowledged decisions survive orderly shutdown:
    ``close()`` drains the queue, ``install_sigterm_handler`` runs it on SIGTERM and a
    finalizer runs it at interpreter exit. They are lost if the process is killed
    (SIGKILL, OOM) or crashes before the commit.

Either way an ``append`` that raises was not accepted (queue full, log closed, bad
record), so the server must not send that decision to the client.

Feedback is always acknowledged after its commit, because its status (joined,
duplicate, orphaned, ...) is only known inside the writer's transaction.

Several processes (replicas) may open the same file, each with its own ``DecisionLog``
and writer thread: WAL mode lets them read concurrently and ``busy_timeout`` queues their
writers on SQLite's lock.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any

import msgspec

from nudgeserve.serve.decisions._config import DecisionLogConfig
from nudgeserve.serve.decisions._errors import (
    DecisionLogClosed,
    DecisionLogOverloaded,
    InvalidFeedbackType,
)
from nudgeserve.serve.decisions._records import (
    DecisionLogStats,
    DecisionRecord,
    FeedbackEvent,
    FeedbackResult,
    validate_decision,
    validate_feedback,
)
from nudgeserve.serve.decisions._schema import DecisionRow, connect
from nudgeserve.serve.decisions._writer import (
    DECISIONS,
    FEEDBACK,
    FLUSH,
    AsyncWaiter,
    GroupCommitWriter,
    SyncWaiter,
    Waiter,
    event_row,
)


def _numpy_to_builtin(obj: Any) -> Any:
    # The server may hand over NumPy arrays or scalars (scores straight from a kernel);
    # stored as plain msgpack lists/floats so any reader can decode them.
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    raise NotImplementedError(f"cannot store objects of type {type(obj).__name__}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_numpy_to_builtin)
_record_decoder = msgspec.msgpack.Decoder(DecisionRecord)


def decision_row(rec: DecisionRecord) -> DecisionRow:
    """Validate ``rec`` and encode it as the stored row (raises naming the bad field)."""
    validate_decision(rec)
    return (
        rec.decision_id,
        float(rec.time),
        rec.unit_id,
        rec.experiment,
        rec.variant,
        rec.policy,
        rec.model_version,
        _encoder.encode(rec.actions),
        _encoder.encode(rec),
    )


async def _nothing() -> None:
    """An awaitable that is already complete (nothing was queued)."""


def _stop_writer(writer: GroupCommitWriter, timeout: float) -> bool:
    return writer.stop(timeout)


class DecisionLog:
    """Durable decision log with feedback join, over one SQLite file.

    ``DecisionLog(path, **settings)`` takes the fields of ``DecisionLogConfig`` as keyword
    arguments; ``DecisionLog.from_config(config)`` takes the struct. Opening creates the
    file and schema (or migrates it) and starts the writer thread.
    """

    def __init__(self, path: str | os.PathLike[str], **settings: Any) -> None:
        self._init(DecisionLogConfig(path=os.fspath(path), **settings))

    @classmethod
    def from_config(cls, config: DecisionLogConfig) -> DecisionLog:
        if not isinstance(config, DecisionLogConfig):
            raise TypeError(f"config must be a DecisionLogConfig, got {type(config).__name__}")
        self = cls.__new__(cls)
        self._init(config)
        return self

    def _init(self, config: DecisionLogConfig) -> None:
        self.config = config
        self._early_ack = config.durability == "enqueue"
        self._writer = GroupCommitWriter(config)
        self._writer.start()
        # Drains the queue when the log is garbage-collected or the interpreter exits
        # without close(); it holds the writer, never self, so it cannot keep self alive.
        self._finalizer = weakref.finalize(self, _stop_writer, self._writer, config.close_timeout_s)

    # -- decisions ------------------------------------------------------------------

    def append(self, record: DecisionRecord) -> None:
        """Log one decision (see the module docstring for when this returns).

        Raises ``InvalidDecisionRecord``/``InvalidDecisionRecordType`` (nothing written),
        ``DecisionLogOverloaded`` (queue full), ``DecisionLogClosed``, and in ``commit``
        durability ``DecisionLogWriteError`` when SQLite refused the write.
        """
        self._append_rows([decision_row(record)])

    def append_many(self, records: Sequence[DecisionRecord]) -> None:
        """Log a batch of decisions as one queue item (all or none are accepted)."""
        rows = [decision_row(r) for r in records]
        if rows:
            self._append_rows(rows)

    async def append_async(self, record: DecisionRecord) -> None:
        """``append`` for an event loop: awaits the commit without blocking the loop."""
        await self._queue_rows_async([decision_row(record)])

    async def append_many_async(self, records: Sequence[DecisionRecord]) -> None:
        """``append_many`` for an event loop."""
        await self.queue_many(records)

    def queue_many(self, records: Sequence[DecisionRecord]) -> Awaitable[None]:
        """Queue a batch of decisions now and return the wait for their commit.

        What ``append_many_async`` does, in two steps: validation, a full queue
        (``DecisionLogOverloaded``) and a closed log raise here, at once; the returned
        awaitable (await it on this event loop) completes when the records are committed,
        or raises what failed the write. Between the two the caller may go on, e.g. score
        the next batch while the writer commits this one.
        """
        rows = [decision_row(r) for r in records]
        if not rows:
            return _nothing()
        return self._queue_rows_async(rows)

    def _append_rows(self, rows: list[DecisionRow]) -> None:
        waiter = SyncWaiter(self._early_ack)
        if self._submit(DECISIONS, rows, waiter, len(rows)):
            self._confirm(waiter)
        elif not self._early_ack:
            waiter.wait()
            if waiter.error is not None:
                raise waiter.error

    def _queue_rows_async(self, rows: list[DecisionRow]) -> Awaitable[None]:
        if self._early_ack:
            # Nobody awaits the commit: a raw-lock waiter costs the loop no wake-up.
            sync_waiter = SyncWaiter(early_ack=True)
            if self._submit(DECISIONS, rows, sync_waiter, len(rows)):
                return self._confirm_raising(sync_waiter)
            return _nothing()
        waiter = AsyncWaiter(asyncio.get_running_loop())
        if self._submit(DECISIONS, rows, waiter, len(rows)):
            return self._confirm_then(waiter)
        return waiter.future

    async def _confirm_raising(self, waiter: SyncWaiter) -> None:
        await self._confirm_async(waiter)
        if waiter.error is not None:
            raise waiter.error

    async def _confirm_then(self, waiter: AsyncWaiter) -> None:
        await self._confirm_async(waiter)
        await waiter.future

    # -- feedback -----------------------------------------------------------------------

    def record_feedback(self, event: FeedbackEvent) -> FeedbackResult:
        """Store one outcome event once; returns after the commit (see FeedbackResult)."""
        return self.record_feedback_many([event])[0]

    def record_feedback_many(self, events: Sequence[FeedbackEvent]) -> list[FeedbackResult]:
        """Store outcome events, each once; results in input order, after the commit.

        Every event is validated first: one bad event raises ``InvalidFeedback`` /
        ``InvalidFeedbackType`` (naming the field) and none is stored.
        """
        rows = self._event_rows(events)
        if not rows:
            return []
        waiter = SyncWaiter()
        if self._submit(FEEDBACK, rows, waiter, len(rows)):
            self._confirm(waiter)
        else:
            waiter.wait()
            if waiter.error is not None:
                raise waiter.error
        return waiter.result

    async def record_feedback_async(self, event: FeedbackEvent) -> FeedbackResult:
        return (await self.record_feedback_many_async([event]))[0]

    async def record_feedback_many_async(
        self, events: Sequence[FeedbackEvent]
    ) -> list[FeedbackResult]:
        rows = self._event_rows(events)
        if not rows:
            return []
        waiter = AsyncWaiter(asyncio.get_running_loop())
        if self._submit(FEEDBACK, rows, waiter, len(rows)):
            await self._confirm_async(waiter)
        return await waiter.future

    def _event_rows(self, events: Sequence[FeedbackEvent]) -> list:
        if isinstance(events, FeedbackEvent) or not isinstance(events, Sequence):
            raise InvalidFeedbackType(
                f"events must be a sequence of FeedbackEvent, got {type(events).__name__}"
            )
        kinds = self.config.outcome_kinds
        now = time.time()
        rows = []
        for ev in events:
            validate_feedback(ev, kinds)
            rows.append(event_row(ev, now))
        return rows

    # -- queue plumbing -----------------------------------------------------------------

    def _submit(self, kind: int, payload: Any, waiter: Waiter, n: int) -> bool:
        """Queue one item; True when ``close()`` began meanwhile (fate to be confirmed)."""
        w = self._writer
        if w.closing:
            raise DecisionLogClosed("decision log is closed")
        depth = w.queue.qsize()
        if depth >= self.config.max_queue:
            raise DecisionLogOverloaded(
                f"decision log queue is full ({depth} pending >= max_queue "
                f"{self.config.max_queue}); retry later"
            )
        w.queue.put((kind, payload, waiter, n, time.monotonic()))
        return w.closing

    def _confirm(self, waiter: SyncWaiter) -> None:
        # close() started while we queued: the item may have been queued after the
        # writer's last look at the queue. Wait until it is written or provably not.
        while not waiter.wait(0.005):
            if self._writer.drained and not waiter.done():
                raise DecisionLogClosed("decision log closed before the record was queued")
        if waiter.error is not None:
            raise waiter.error

    async def _confirm_async(self, waiter: Waiter) -> None:
        while not waiter.done():
            if self._writer.drained and not waiter.done():
                raise DecisionLogClosed("decision log closed before the record was queued")
            await asyncio.sleep(0.005)

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything queued before this call is committed.

        Raises ``TimeoutError`` after ``timeout`` seconds, ``DecisionLogClosed`` if closed.
        """
        waiter = SyncWaiter()
        if self._submit(FLUSH, None, waiter, 0):
            self._confirm(waiter)
            return
        if not waiter.wait(-1 if timeout is None else timeout):
            raise TimeoutError(f"decision log flush did not finish within {timeout}s")

    async def aflush(self) -> None:
        waiter = AsyncWaiter(asyncio.get_running_loop())
        if self._submit(FLUSH, None, waiter, 0):
            await self._confirm_async(waiter)
        await waiter.future

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting, write everything queued, stop the writer. Idempotent.

        Safe to call from a signal handler. Raises ``TimeoutError`` when the writer has
        not drained within ``timeout`` (default ``close_timeout_s``); it keeps draining.
        """
        t = self.config.close_timeout_s if timeout is None else timeout
        if not self._writer.stop(t):
            raise TimeoutError(
                f"decision log writer still draining after {t}s "
                f"({self._writer.queue.qsize()} items queued)"
            )
        self._finalizer.detach()

    async def aclose(self, timeout: float | None = None) -> None:
        """``close`` for an event loop: the drain runs in a worker thread."""
        await asyncio.get_running_loop().run_in_executor(None, self.close, timeout)

    @property
    def closed(self) -> bool:
        return self._writer.closing

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------

    def get_decision(self, decision_id: str) -> DecisionRecord | None:
        """The committed decision with this id, or None. Opens its own connection."""
        if not isinstance(decision_id, str):
            raise TypeError(f"decision_id must be str, got {type(decision_id).__name__}")
        conn = connect(
            self.config.path, self.config.synchronous, self.config.busy_timeout_ms, readonly=True
        )
        try:
            row = conn.execute(
                "SELECT record FROM decisions WHERE decision_id = ?", (decision_id,)
            ).fetchone()
        finally:
            conn.close()
        return None if row is None else _record_decoder.decode(row[0])

    def export_parquet(
        self,
        path: str | os.PathLike[str],
        since: float | datetime | None = None,
        until: float | datetime | None = None,
        **options: Any,
    ) -> Any:
        """Flush, then write joined decisions+outcomes to Parquet.

        ``options`` are those of ``export_parquet`` (``reward_kind``, ``annotate``,
        ``chunk_decisions``); the outcome kinds are this log's. Returns an ExportSummary.
        """
        from nudgeserve.serve.decisions._export import export_parquet

        if not self.closed:
            self.flush()
        return export_parquet(
            self.config.path,
            path,
            since=since,
            until=until,
            outcome_kinds=self.config.outcome_kinds,
            busy_timeout_ms=self.config.busy_timeout_ms,
            **options,
        )

    def stats(self) -> DecisionLogStats:
        s = self._writer.stats
        return DecisionLogStats(
            written=s.written,
            duplicate_decisions=s.duplicate_decisions,
            batches=s.batches,
            feedback_events=s.feedback_events,
            spilled=s.spilled,
            queue_depth=self._writer.queue.qsize(),
            last_batch_records=s.last_batch_records,
            last_commit_s=s.last_commit_s,
        )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"DecisionLog({self.config.path!r}, durability={self.config.durability!r}, {state})"
