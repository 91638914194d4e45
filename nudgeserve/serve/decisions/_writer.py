"""The single writer thread: a bounded queue in, group commits out.

Producers (request handlers, any thread or event loop) put items on a
``queue.SimpleQueue`` and go on; one thread per ``DecisionLog`` takes everything that has
arrived, writes it in one ``BEGIN IMMEDIATE ... COMMIT`` and then tells the waiters.
A batch closes at ``max_batch`` records, ``max_delay_ms`` after its first record was
queued, or at a flush/stop marker, whichever comes first. With ``max_delay_ms = 0`` the
batch is whatever queued up during the previous commit, so batches grow with load
without adding delay when idle.

Why ``SimpleQueue`` and raw locks rather than ``queue.Queue`` and
``concurrent.futures.Future``: ``close()`` must be safe to call from a signal handler,
which runs in the main thread between any two bytecodes, possibly while that thread is
inside ``Queue.put`` or ``Future.result`` holding their (non-reentrant) locks.
``SimpleQueue.put`` is documented reentrant, and the writer only ever *releases* a
waiter's raw lock, which never blocks; so the writer can drain and finish while the main
thread sits in a handler. The queue bound is checked with ``qsize()`` by the producer.

WAL checkpoints: SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000
WAL pages, copying the WAL into the database while that commit (and every decision
waiting for it) waits: profiling under open-loop load showed it as the tail of
``/v1/decide``. The writer's connection turns it off
(``wal_autocheckpoint = 0``) and a checkpointer thread with its own connection runs
``PRAGMA wal_checkpoint(PASSIVE)`` every ``CHECKPOINT_INTERVAL_S``: a passive checkpoint
never takes the write lock, so commits go on meanwhile.

Failure handling: a busy database (another process's write lock) is retried. Any other
error rolls the batch back and retries its items one transaction each, so one bad item
fails alone; a failed item's waiter gets ``DecisionLogWriteError``, except for decisions
already acknowledged (``enqueue`` durability), which go to a side file
``<db>.unwritten-<pid>-<n>.msgpack`` that the next writer to open the database imports.
"""

from __future__ import annotations

import _thread
import asyncio
import glob
import logging
import os
import queue
import sqlite3
import threading
import time
from typing import Any

import msgspec

from nudgeserve.serve.decisions._config import DecisionLogConfig
from nudgeserve.serve.decisions._errors import DecisionLogWriteError
from nudgeserve.serve.decisions._feedback import EventRow, apply_feedback, rejoin_orphans
from nudgeserve.serve.decisions._schema import (
    INSERT_DECISION,
    DecisionRow,
    connect,
    is_busy,
    migrate,
)

log = logging.getLogger("nudgeserve.decisions")

# Seconds between passive WAL checkpoints (see the module docstring).
CHECKPOINT_INTERVAL_S = 1.0

# Item kinds on the queue.
DECISIONS, FEEDBACK, FLUSH, STOP = range(4)

_spill_encoder = msgspec.msgpack.Encoder()
_spill_decoder = msgspec.msgpack.Decoder(
    list[tuple[str, float, str, str, str, str, str, bytes, bytes]]
)


class SyncWaiter:
    """Completion of one item for a thread that may block on it.

    ``early_ack``: the caller was already told "accepted" (``enqueue`` durability), so a
    failed write must be spilled rather than reported.
    """

    __slots__ = ("_lock", "result", "error", "early_ack")

    def __init__(self, early_ack: bool = False) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.early_ack = early_ack

    def resolve(self, result: Any, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self._lock.release()

    def done(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float = -1) -> bool:
        """Block until resolved (or ``timeout`` seconds); True when resolved."""
        if self._lock.acquire(timeout=timeout):
            self._lock.release()
            return True
        return False


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.done():  # the awaiting task was cancelled; the write itself still happened
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _settle_many(settles: list) -> None:
    for fut, result, error in settles:
        _settle(fut, result, error)


class AsyncWaiter:
    """Completion of one item for a coroutine: resolved via ``call_soon_threadsafe``."""

    __slots__ = ("loop", "future", "early_ack", "_done")

    def __init__(self, loop: asyncio.AbstractEventLoop, early_ack: bool = False) -> None:
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.early_ack = early_ack
        self._done = False

    def resolve(self, result: Any, error: BaseException | None) -> None:
        self._done = True
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def done(self) -> bool:
        return self._done


Waiter = SyncWaiter | AsyncWaiter
# (kind, payload, waiter, n_records, monotonic time queued)
Item = tuple[int, Any, Waiter | None, int, float]


class WriterStats:
    """Plain counters, written by the writer thread only, read by anyone."""

    __slots__ = (
        "written",
        "duplicate_decisions",
        "batches",
        "feedback_events",
        "spilled",
        "last_batch_records",
        "last_commit_s",
    )

    def __init__(self) -> None:
        self.written = self.duplicate_decisions = self.batches = 0
        self.feedback_events = self.spilled = self.last_batch_records = 0
        self.last_commit_s = 0.0


class Checkpointer:
    """A daemon thread running ``PRAGMA wal_checkpoint(PASSIVE)`` on its own connection
    every ``interval_s`` (see the module docstring); ``stop`` runs a last one."""

    def __init__(
        self, path: str, busy_timeout_ms: int, interval_s: float = CHECKPOINT_INTERVAL_S
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.interval_s = interval_s
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="decision-log-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = connect(self.path, "NORMAL", self.busy_timeout_ms)
        except Exception as exc:  # the writer's own checks report a bad file
            log.warning("decision log checkpointer could not open %s: %s", self.path, exc)
            return
        try:
            while True:
                stopping = self._stop.wait(self.interval_s)
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # busy or locked: the next one catches up
                    log.debug("passive checkpoint skipped: %s", exc)
                if stopping:
                    return
        finally:
            conn.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)


class GroupCommitWriter:
    """One background thread that owns the write connection of one ``DecisionLog``."""

    def __init__(self, config: DecisionLogConfig) -> None:
        self.config = config
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.stats = WriterStats()
        # closing: set before the stop marker is queued; producers that see it after
        # queueing must confirm their item's fate. drained: the writer has taken its
        # last item; anything still unresolved then was never going to be written.
        self.closing = False
        self.drained = False
        self._spill_seq = 0
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)

    # -- lifecycle (called by DecisionLog) -------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self, timeout: float | None) -> bool:
        """Queue the stop marker and wait for the drain; True when the writer finished.

        Safe from a signal handler and idempotent."""
        if not self.closing:
            self.closing = True
            self.queue.put((STOP, None, None, 0, time.monotonic()))
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        cfg = self.config
        try:
            self._conn = connect(cfg.path, cfg.synchronous, cfg.busy_timeout_ms)
            migrate(self._conn)
            self._import_spills()
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = Checkpointer(cfg.path, cfg.busy_timeout_ms)
        except BaseException as exc:
            self._startup_error = exc
            self.drained = True
            if self._conn is not None:
                self._conn.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except BaseException as exc:  # a bug here must not leave producers waiting
            log.critical("decision log writer crashed", exc_info=True)
            self.closing = True
            self._fail_remaining(exc)
        finally:
            # Set only after the last get_nowait() found the queue empty: an item queued
            # later will never be written, and its producer (which saw ``closing``) now
            # learns so instead of waiting.
            self.drained = True
            self._checkpointer.stop()
            self._conn.close()

    def _loop(self) -> None:
        stopping = False
        while True:
            if stopping:
                try:
                    first = self.queue.get_nowait()
                except queue.Empty:
                    return
            else:
                first = self.queue.get()
            batch = self._collect(first, stopping)
            try:
                self._write(batch)
            except BaseException as exc:
                for item in batch:
                    if item[2] is not None and not item[2].done():
                        self._fail(item, exc)
                raise
            if any(it[0] == STOP for it in batch):
                stopping = True

    def _collect(self, first: Item, stopping: bool) -> list[Item]:
        batch = [first]
        if first[0] in (FLUSH, STOP):
            return batch
        n, cap = first[3], self.config.max_batch
        delay = self.config.max_delay_ms / 1000.0
        deadline = first[4] + delay
        q = self.queue
        while n < cap:
            try:
                item = q.get_nowait()
            except queue.Empty:
                if delay <= 0 or stopping:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = q.get(timeout=remaining)
                except queue.Empty:
                    break
            batch.append(item)
            n += item[3]
            if item[0] in (FLUSH, STOP):
                break
        return batch

    # -- writing ----------------------------------------------------------------------

    def _transaction(self, batch: list[Item]) -> list[Any]:
        """Write every item of ``batch`` in one transaction; per-item results."""
        conn = self._conn
        if all(it[0] in (FLUSH, STOP) for it in batch):
            return [None] * len(batch)
        self._begin()
        t0 = time.perf_counter()
        try:
            rows: list[DecisionRow] = []
            for kind, payload, _, _, _ in batch:
                if kind == DECISIONS:
                    rows.extend(payload)
            if rows:
                last = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM decisions").fetchone()[0]
                inserted = conn.executemany(INSERT_DECISION, rows).rowcount
                rejoin_orphans(conn, last, self.config.late_window_s)
            results: list[Any] = []
            n_events = 0
            for kind, payload, _, _, _ in batch:
                if kind == FEEDBACK:
                    results.append(apply_feedback(conn, payload, self.config.late_window_s))
                    n_events += len(payload)
                else:
                    results.append(None)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        s = self.stats
        s.last_commit_s = time.perf_counter() - t0
        s.batches += 1
        s.last_batch_records = len(rows)
        s.written += len(rows)
        if rows:
            s.duplicate_decisions += len(rows) - inserted
        s.feedback_events += n_events
        return results

    def _begin(self) -> None:
        # SQLite's busy handler already waited busy_timeout_ms inside each attempt; keep
        # trying a while longer (another replica may hold the lock through a checkpoint).
        for attempt in range(6):
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or attempt == 5:
                    raise
                log.warning(
                    "decision log busy for %.0fs; retrying", self.config.busy_timeout_ms / 1000
                )

    def _write(self, batch: list[Item]) -> None:
        try:
            results = self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1 or is_busy(exc):
                # A lock held past every retry is not the items' fault: splitting the
                # batch would only wait that long again per item.
                for item in batch:
                    self._fail(item, exc)
                return
            log.warning(
                "decision log batch of %d items failed (%s); writing them one by one",
                len(batch),
                exc,
            )
            for item in batch:
                self._write([item])
            return
        # One wake-up per event loop per batch, not one per record: each
        # call_soon_threadsafe writes to the loop's self-pipe.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for item, result in zip(batch, results, strict=True):
            waiter = item[2]
            if waiter is None:
                continue
            if type(waiter) is AsyncWaiter:
                waiter._done = True
                by_loop.setdefault(waiter.loop, []).append((waiter.future, result, None))
            else:
                waiter.resolve(result, None)
        for loop, settles in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_many, settles)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _fail(self, item: Item, exc: BaseException) -> None:
        kind, payload, waiter, _, _ = item
        if kind in (FLUSH, STOP):  # markers carry no data; whatever failed said so itself
            if waiter is not None:
                waiter.resolve(None, None)
            return
        err = DecisionLogWriteError(f"decision log write failed: {exc}")
        err.__cause__ = exc
        if kind == DECISIONS and (waiter is None or waiter.early_ack):
            try:
                path = self._spill(payload)
            except Exception:
                log.critical(
                    "could not write %d acknowledged decisions to the database nor "
                    "to a side file; they are lost",
                    len(payload),
                    exc_info=True,
                )
                if waiter is not None:
                    waiter.resolve(None, err)
                return
            log.error(
                "could not write %d acknowledged decisions (%s); kept in %s, imported "
                "at the next open",
                len(payload),
                exc,
                path,
            )
            if waiter is not None:
                waiter.resolve(None, None)
            return
        log.error("decision log write failed: %s", exc)
        if waiter is not None:
            waiter.resolve(None, err)

    def _fail_remaining(self, exc: BaseException) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            self._fail(item, exc)

    # -- side files --------------------------------------------------------------------

    def _spill(self, rows: list[DecisionRow]) -> str:
        self._spill_seq += 1
        path = f"{self.config.path}.unwritten-{os.getpid()}-{self._spill_seq}.msgpack"
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_spill_encoder.encode(rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.stats.spilled += len(rows)
        return path

    def _import_spills(self) -> None:
        """Insert decisions left in side files by an earlier writer, then delete them."""
        for path in sorted(glob.glob(glob.escape(self.config.path) + ".unwritten-*.msgpack")):
            try:
                with open(path, "rb") as f:
                    rows = _spill_decoder.decode(f.read())
            except FileNotFoundError:  # another replica imported it first
                continue
            except (OSError, msgspec.DecodeError) as exc:
                log.error("cannot read decision side file %s: %s", path, exc)
                continue
            try:
                self._begin()
                last = self._conn.execute(
                    "SELECT COALESCE(MAX(rowid), 0) FROM decisions"
                ).fetchone()[0]
                self._conn.executemany(INSERT_DECISION, rows)
                rejoin_orphans(self._conn, last, self.config.late_window_s)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                log.error("cannot import decision side file %s yet: %s", path, exc)
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            log.warning("imported %d decisions from side file %s", len(rows), path)


def event_row(ev: Any, now: float) -> EventRow:
    """The writer's tuple for a validated ``FeedbackEvent``."""
    t = now if ev.time is None else float(ev.time)
    return (ev.decision_id, ev.event_id, ev.kind, float(ev.value), t, ev.action, now)
