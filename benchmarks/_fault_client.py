"""The fault benchmark's client: open-loop ``POST /v1/decide`` on its own thread.

Unlike ``_load_client`` (latency figures inside a window), this one records every request
(scheduled send time, completion time, outcome, the ``decision_id`` of a 200) so that an
outage can be timed and every acknowledged decision looked up afterwards. Connections are
kept alive in a pool; one that failed is closed and reconnected by its next user, and every
request has a short timeout (a stalled server shows up as ``timeout``, not as a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks._load_client import _HttpConnection

HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 2.0


def now() -> float:
    """The clock of every time recorded here (``perf_counter`` seconds)."""
    return time.perf_counter()


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: scheduled send time and completion time (``perf_counter`` seconds),
    ``kind`` (``"ok"``, ``"http_503"``..., ``"refused"``, ``"lost"``, ``"timeout"``,
    ``"error"``) and the ``decision_id`` of a 200."""

    scheduled: float
    done: float
    kind: str
    decision_id: str | None = None


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionError | OSError):
        return "lost"  # reset, broken pipe, closed while the answer was awaited
    return "error"


def _decision_id(body: bytes) -> str | None:
    try:
        value = json.loads(body).get("decision_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


class LoadDriver:
    """Open-loop ``POST /v1/decide`` at ``rate``/s on its own thread and event loop.

    ``start()``, then ``stop()`` returns every request's ``Outcome`` (requests still
    unanswered get ``drain_s`` to finish; each has ``timeout_s`` anyway). ``outcomes``
    may be read meanwhile (appended from the loop's thread).
    """

    def __init__(
        self,
        port: int,
        bodies: Sequence[bytes],
        rate: float,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = 64,
        seed: int = 0,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate!r}")
        self.port = port
        self.rate = float(rate)
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.requests = [
            b"POST /v1/decide HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (HOST.encode(), port, len(b), b)
            for b in bodies
        ]
        self.outcomes: list[Outcome] = []
        # The first error message of each failure kind, for the report.
        self.first_errors: dict[str, str] = {}
        self._rng = np.random.default_rng(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> LoadDriver:
        self._thread.start()
        self._started.wait(10.0)
        return self

    def stop(self, drain_s: float = REQUEST_TIMEOUT_S + 1.0) -> list[Outcome]:
        if self._loop is not None and self._thread.is_alive():
            self._drain_s = drain_s
            self._loop.call_soon_threadsafe(self._stopping.set)  # type: ignore[union-attr]
            self._thread.join(drain_s + 10.0)
        if self._error is not None:
            raise RuntimeError("the load client failed") from self._error
        return list(self.outcomes)

    def first_ok_after(self, t: float) -> Outcome | None:
        """The first 200 (by completion) of a request scheduled at or after ``t``."""
        best = None
        for o in list(self.outcomes):
            if o.kind == "ok" and o.scheduled >= t and (best is None or o.done < best.done):
                best = o
        return best

    # -- on the loop's thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            import uvloop

            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._started.set()
            loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._drain_s = REQUEST_TIMEOUT_S + 1.0
        # Slots of the pool: a closed connection is reconnected by whoever takes it.
        self._idle: asyncio.LifoQueue[_HttpConnection] = asyncio.LifoQueue()
        self._slots = 0
        pending: set[asyncio.Task] = set()
        self._started.set()
        i = 0
        t = now()
        while not self._stopping.is_set():
            t += float(self._rng.exponential(1.0 / self.rate))
            delay = t - now()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    break
            task = asyncio.ensure_future(self._fire(i, t))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
        if pending:
            await asyncio.wait(set(pending), timeout=self._drain_s)
        for task in list(pending):
            task.cancel()
        while not self._idle.empty():
            self._idle.get_nowait().close()

    async def _take(self) -> _HttpConnection:
        if self._idle.empty() and self._slots < self.max_connections:
            self._slots += 1
            conn = _HttpConnection()
            conn.closed = True
        else:
            conn = await self._idle.get()
        if conn.closed:
            try:
                _, conn = await asyncio.get_running_loop().create_connection(
                    _HttpConnection, HOST, self.port
                )
            except BaseException:
                self._idle.put_nowait(conn)  # the slot, closed: the next taker retries
                raise
        return conn

    async def _exchange(self, request: bytes, holder: list) -> tuple[int, bytes]:
        conn = await self._take()
        holder.append(conn)
        return await conn.send(request)

    async def _fire(self, i: int, scheduled: float) -> None:
        holder: list[_HttpConnection] = []
        decision_id = None
        kind = "cancelled"  # stopped before an answer (only after the drain period)
        try:
            status, body = await asyncio.wait_for(
                self._exchange(self.requests[i % len(self.requests)], holder), self.timeout_s
            )
            if status == 200:
                kind = "ok"
                decision_id = _decision_id(body)
            else:
                kind = f"http_{status}"
        except Exception as exc:
            kind = _kind(exc)
            self.first_errors.setdefault(kind, f"{type(exc).__name__}: {exc}"[:200])
        finally:
            self.outcomes.append(Outcome(scheduled, now(), kind, decision_id))
            for conn in holder:
                if kind != "ok" and not kind.startswith("http_"):
                    conn.close()  # an answer may still come on it: never reuse it
                self._idle.put_nowait(conn)


def kinds_between(outcomes: Iterable[Outcome], start: float, end: float = math.inf) -> dict:
    """Counts by kind of the requests scheduled in ``[start, end)``."""
    return dict(Counter(o.kind for o in outcomes if start <= o.scheduled < end))


def timeline(outcomes: Iterable[Outcome], t0: float, bin_s: float = 0.5) -> list[dict]:
    """Requests by kind per ``bin_s`` of scheduled time, from ``t0`` on (``t`` is the
    bin's start in seconds from ``t0``): how the outage looked to the client."""
    bins: dict[int, Counter] = {}
    for o in outcomes:
        if o.scheduled >= t0:
            bins.setdefault(int((o.scheduled - t0) // bin_s), Counter())[o.kind] += 1
    return [{"t": round(b * bin_s, 3), **dict(bins[b])} for b in sorted(bins)]
