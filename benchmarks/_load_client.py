"""The load generator: HTTP/1.1 keep-alive clients on one asyncio loop, closed and open loop.

Requests are pre-encoded bytes (built before timing starts) sent over persistent
connections with a minimal HTTP/1.1 response parser, so the client spends a few tens of
microseconds per request: on a 2-core machine the client shares the CPU with the server
under test, and a heavy client (aiohttp, requests) would be what we measure.

- Closed loop (``closed_loop``): ``concurrency`` workers, each with its own connection,
  send the next request as soon as the previous answer arrives.
- Open loop (``open_loop``): requests are scheduled at Poisson arrival times for a fixed
  rate whether or not earlier ones have been answered; each one's latency is measured from
  its *scheduled* send time, so a stalled server is charged for the requests that queued
  behind the stall (no coordinated omission). Requests still unanswered when the drain
  timeout expires count as ``incomplete`` with infinite latency.

Only requests inside the measurement window (after ``warmup_s``) are recorded.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class HttpTarget:
    """Where and what to send.

    host, port: the server (loopback only for load tests).
    path: e.g. ``"/v2/models/obd_click/infer"``.
    bodies: request bodies, sent round-robin; at least one.
    content_type: the ``Content-Type`` of every body.
    extra_headers: further ``(name, value)`` pairs sent with every request.
    """

    host: str
    port: int
    path: str
    bodies: Sequence[bytes]
    content_type: str = "application/json"
    extra_headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port must be an int in 1..65535, got {self.port!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        if len(self.bodies) == 0:
            raise ValueError("bodies must hold at least one request body")
        for i, body in enumerate(self.bodies):
            if not isinstance(body, bytes | bytearray):
                raise TypeError(f"bodies[{i}] must be bytes, got {type(body).__name__}")

    def encoded_requests(self) -> list[bytes]:
        """Every body as one complete HTTP/1.1 POST request (head + body)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.extra_headers)
        out = []
        for body in self.bodies:
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}\r\n"
            )
            out.append(head.encode("latin-1") + bytes(body))
        return out


@dataclass
class LoadResult:
    """Figures for one load point.

    mode: ``"closed"`` or ``"open"``; offered: concurrency (closed) or requests/s (open).
    ok: successful (2xx) answers to requests sent inside the window; errors: non-2xx
    answers and connection failures among those;
    incomplete: open loop only, scheduled requests not answered before the drain timeout.
    throughput_rps: successful answers completed inside the window / window seconds.
    p50_ms, p95_ms, p99_ms, mean_ms, max_ms: latency of recorded requests (``inf`` when
    incomplete requests reach that percentile).
    client_lag_p99_ms: open loop only, how late the client dispatched requests relative to
    their schedule (large values mean the client, not the server, was the bottleneck).
    first_error: the first error's status and body (truncated), for the report.
    """

    mode: str
    offered: float
    duration_s: float
    ok: int = 0
    errors: int = 0
    incomplete: int = 0
    throughput_rps: float = 0.0
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    mean_ms: float = math.nan
    max_ms: float = math.nan
    client_lag_p99_ms: float | None = None
    first_error: str | None = None
    tool: str = "python"
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(self).items()
        }


def latency_summary(latencies_s: np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds of ``latencies_s: float64[n]`` (seconds).

    Percentiles use the inverted CDF (a value that was actually observed), so an infinite
    latency (an unanswered request) shows up as ``inf`` once it reaches the percentile
    instead of being interpolated away. Empty input gives NaNs.
    """
    lat = np.asarray(latencies_s, dtype=np.float64)
    if lat.ndim != 1:
        raise ValueError(f"latencies_s must be 1-D, got shape {lat.shape}")
    if lat.size == 0:
        return {f"p{p}_ms": math.nan for p in PERCENTILES} | {
            "mean_ms": math.nan,
            "max_ms": math.nan,
        }
    ps = np.percentile(lat, PERCENTILES, method="inverted_cdf") * 1e3
    return {f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, ps, strict=True)} | {
        "mean_ms": float(lat.mean() * 1e3),
        "max_ms": float(lat.max() * 1e3),
    }


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None
        self.closed = False
        # Whether the last error answer (status >= 400) carried a Retry-After header.
        self.retry_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Requests are small and latency-bound: do not wait to coalesce segments.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._waiter is not None and not self._waiter.done():
            parsed = _parse_response(self._buf)
            if parsed is not None:
                status, body, used, close = parsed
                if status >= 400:
                    self.retry_after = b"\r\nretry-after:" in bytes(self._buf[:used]).lower()
                del self._buf[:used]
                if close:
                    self.closed = True
                    assert self.transport is not None
                    self.transport.close()
                self._waiter.set_result((status, body))

    def send(self, request: bytes) -> asyncio.Future:
        """Write a whole request; the future resolves to ``(status, body)``."""
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True


def _parse_response(buf: bytearray) -> tuple[int, bytes, int, bool] | None:
    """``(status, body, bytes used, server closes)`` for a complete response, else None.

    Handles ``Content-Length`` and ``Transfer-Encoding: chunked`` bodies, which is what
    uvicorn (Ray Serve's proxy) and Triton send.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"malformed status line {lines[0]!r}")
    status = int(parts[1])
    length = None
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    start = end + 4
    if chunked:
        pos = start
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            chunk_start = eol + 2
            if len(buf) < chunk_start + size + 2:
                return None
            if size == 0:
                # Trailers are not used by the servers we drive; the last chunk ends in CRLF.
                trailer_end = buf.find(b"\r\n", chunk_start)
                if trailer_end < 0:
                    return None
                return status, bytes(body), trailer_end + 2, close
            body += buf[chunk_start : chunk_start + size]
            pos = chunk_start + size + 2
    if length is None:
        length = 0 if status in (204, 304) or 100 <= status < 200 else None
        if length is None:
            raise ConnectionError("response without Content-Length or chunked encoding")
    if len(buf) < start + length:
        return None
    return status, bytes(buf[start : start + length]), start + length, close


async def _connect(host: str, port: int) -> _HttpConnection:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(_HttpConnection, host, port)
    return proto


class _Recorder:
    """Collects latencies of requests inside the measurement window."""

    def __init__(self, window_start: float, window_end: float) -> None:
        self.window_start = window_start
        self.window_end = window_end
        self.latencies: list[float] = []
        self.completed_in_window = 0
        self.errors = 0
        self.first_error: str | None = None

    def record(self, started: float, done: float, status: int, body: bytes) -> None:
        ok = 200 <= status < 300
        # Throughput counts every success that completes inside the window, whenever it
        # was sent; latency and errors belong to the requests sent (scheduled) inside it.
        if ok and self.window_start <= done <= self.window_end:
            self.completed_in_window += 1
        if started < self.window_start or started >= self.window_end:
            return
        if ok:
            self.latencies.append(done - started)
        else:
            self.error(f"HTTP {status}: {body[:300]!r}")

    def error(self, message: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = message


async def _closed_loop(
    target: HttpTarget, concurrency: int, duration_s: float, warmup_s: float, timeout_s: float
) -> LoadResult:
    requests = target.encoded_requests()
    conns = [await _connect(target.host, target.port) for _ in range(concurrency)]
    t0 = time.perf_counter()
    rec = _Recorder(t0 + warmup_s, t0 + warmup_s + duration_s)
    stop_at = rec.window_end

    async def worker(w: int) -> None:
        conn = conns[w]
        i = w
        n = len(requests)
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            try:
                if conn.closed:
                    conn = await _connect(target.host, target.port)
                    conns[w] = conn
                status, body = await asyncio.wait_for(conn.send(requests[i % n]), timeout_s)
            except (OSError, ConnectionError, TimeoutError) as exc:
                conn.close()
                if started >= rec.window_start:
                    rec.error(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)  # a refused connection must not spin the CPU
                continue
            rec.record(started, time.perf_counter(), status, body)
            i += concurrency

    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        for c in conns:
            c.close()
    result = LoadResult(
        "closed",
        concurrency,
        duration_s,
        ok=len(rec.latencies),
        errors=rec.errors,
        first_error=rec.first_error,
        throughput_rps=rec.completed_in_window / duration_s,
    )
    for k, v in latency_summary(np.array(rec.latencies)).items():
        setattr(result, k, v)
    return result


def poisson_schedule(rate: float, horizon_s: float, seed: int) -> np.ndarray:
    """Send offsets (seconds from start, float64[n], increasing) of a Poisson process.

    Exponential inter-arrival times with mean ``1 / rate``, up to ``horizon_s``.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate!r}")
    if not horizon_s > 0:
        raise ValueError(f"horizon_s must be > 0, got {horizon_s!r}")
    rng = np.random.default_rng(seed)
    n = int(rate * horizon_s * 1.2 + 10 * math.sqrt(rate * horizon_s) + 10)
    offsets = np.cumsum(rng.exponential(1.0 / rate, size=n))
    while offsets[-1] < horizon_s:  # vanishingly rare; extend rather than truncate the load
        more = offsets[-1] + np.cumsum(rng.exponential(1.0 / rate, size=n))
        offsets = np.concatenate([offsets, more])
    return offsets[offsets < horizon_s]


async def _send_on_schedule(
    target: HttpTarget,
    offsets: np.ndarray,
    opened: int,
    max_connections: int,
    drain_s: float,
    timeout_s: float,
    started: Callable[[float], None],
    answered: Callable[[int, float, int, bytes, _HttpConnection], None],
    failed: Callable[[int, float, BaseException], None],
) -> np.ndarray:
    """The open-loop engine: send request ``i`` at ``t0 + offsets[i]`` on keep-alive
    connections (``opened`` opened up front, so set-up is not charged to the first
    requests; more while fewer than ``max_connections`` are open, else wait for an idle
    one: that wait is part of the request's latency). ``started(t0)`` is called before the
    first send; ``answered(i, scheduled, status, body, conn)`` when request i is answered
    (``time.perf_counter()`` is its completion), ``failed(i, scheduled, exc)`` when its
    connection failed. Requests still running ``drain_s`` after the last send are
    cancelled. Returns how late each request was dispatched (seconds)."""
    requests = target.encoded_requests()
    idle: asyncio.Queue[_HttpConnection] = asyncio.Queue()
    all_conns: list[_HttpConnection] = []
    for _ in range(opened):
        all_conns.append(await _connect(target.host, target.port))
        idle.put_nowait(all_conns[-1])
    n_open = opened
    t0 = time.perf_counter() + 0.01
    started(t0)
    schedule = t0 + np.asarray(offsets, dtype=np.float64)
    n = len(schedule)
    lags = np.zeros(n)
    pending: set[asyncio.Task] = set()

    async def fire(i: int) -> None:
        nonlocal n_open
        scheduled = float(schedule[i])
        if idle.empty() and n_open < max_connections:
            n_open += 1
            conn = _HttpConnection()
            conn.closed = True  # connected below, like any connection the server closed
        else:
            conn = await idle.get()
        try:
            if conn.closed:
                conn = await _connect(target.host, target.port)
                all_conns.append(conn)
            status, body = await asyncio.wait_for(conn.send(requests[i % len(requests)]), timeout_s)
        except (OSError, ConnectionError, TimeoutError) as exc:
            conn.close()
            failed(i, scheduled, exc)
            idle.put_nowait(conn)
            return
        answered(i, scheduled, status, body, conn)
        idle.put_nowait(conn)

    i = 0
    while i < n:
        now = time.perf_counter()
        if schedule[i] > now:
            await asyncio.sleep(schedule[i] - now)
            now = time.perf_counter()
        # Fire everything that is due (the loop may have woken late).
        while i < n and schedule[i] <= now:
            lags[i] = now - schedule[i]
            task = asyncio.ensure_future(fire(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
    if pending:
        _, still = await asyncio.wait(set(pending), timeout=drain_s)
        for task in still:
            task.cancel()
    for c in all_conns:
        c.close()
    return lags


async def _open_loop(
    target: HttpTarget,
    rate: float,
    duration_s: float,
    warmup_s: float,
    max_connections: int,
    drain_s: float,
    seed: int,
    timeout_s: float,
) -> LoadResult:
    offsets = poisson_schedule(rate, warmup_s + duration_s, seed)
    recorders: list[_Recorder] = []

    def started(t0: float) -> None:
        recorders.append(_Recorder(t0 + warmup_s, t0 + warmup_s + duration_s))

    def answered(i: int, scheduled: float, status: int, body: bytes, conn) -> None:
        recorders[0].record(scheduled, time.perf_counter(), status, body)

    def failed(i: int, scheduled: float, exc: BaseException) -> None:
        if scheduled >= recorders[0].window_start:
            recorders[0].error(f"{type(exc).__name__}: {exc}")

    lag_all = await _send_on_schedule(
        target,
        offsets,
        min(max_connections, max(8, int(rate * 0.05))),
        max_connections,
        drain_s,
        timeout_s,
        started,
        answered,
        failed,
    )
    rec = recorders[0]
    measured = offsets >= warmup_s  # scheduled inside the measurement window
    lags = lag_all[measured]
    measured_scheduled = int(np.count_nonzero(measured))
    answered_n = len(rec.latencies) + rec.errors
    incomplete = max(0, measured_scheduled - answered_n)
    lat = np.array(rec.latencies + [math.inf] * incomplete)
    result = LoadResult(
        "open",
        rate,
        duration_s,
        ok=len(rec.latencies),
        errors=rec.errors,
        incomplete=incomplete,
        first_error=rec.first_error,
        throughput_rps=rec.completed_in_window / duration_s,
        client_lag_p99_ms=float(np.percentile(lags, 99) * 1e3) if len(lags) else None,
    )
    for k, v in latency_summary(lat).items():
        setattr(result, k, v)
    return result


@dataclass
class Trace:
    """Every request of an open-loop run, in schedule order.

    scheduled_s: send times (seconds from the run's start); latency_s: from the scheduled
    send to the answer (``inf``: unanswered before the drain timeout, or the connection
    failed); status: HTTP status (0: no answer); json_error: the body is a JSON object
    with an ``"error"`` field; retry_after: an error answer carried ``Retry-After``.
    """

    scheduled_s: np.ndarray
    latency_s: np.ndarray
    status: np.ndarray
    json_error: np.ndarray
    retry_after: np.ndarray
    # How late the client dispatched each request (seconds after its scheduled time;
    # large values mean the client, not the server, was behind).
    lag_s: np.ndarray


async def _open_loop_trace(
    target: HttpTarget, offsets: np.ndarray, max_connections: int, drain_s: float, timeout_s: float
) -> Trace:
    n = len(offsets)
    latency = np.full(n, np.inf)
    status = np.zeros(n, dtype=np.int64)
    json_error = np.zeros(n, dtype=bool)
    retry_after = np.zeros(n, dtype=bool)

    def answered(i: int, scheduled: float, code: int, body: bytes, conn) -> None:
        latency[i] = time.perf_counter() - scheduled
        status[i] = code
        if code >= 400:
            json_error[i] = body.startswith(b"{") and b'"error"' in body
            retry_after[i] = conn.retry_after

    lag = await _send_on_schedule(
        target,
        offsets,
        min(max_connections, 64),
        max_connections,
        drain_s,
        timeout_s,
        lambda t0: None,
        answered,
        lambda i, scheduled, exc: None,  # no answer: status 0, latency inf
    )
    return Trace(
        np.asarray(offsets, dtype=np.float64), latency, status, json_error, retry_after, lag
    )


def open_loop_trace(
    target: HttpTarget,
    offsets: np.ndarray,
    max_connections: int = 512,
    drain_s: float = 10.0,
    timeout_s: float = 30.0,
) -> Trace:
    """Send at ``offsets`` (seconds from start, increasing; e.g. ``poisson_schedule``
    pieces at several rates) and record every request (``Trace``); latency from the
    scheduled send time."""
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.ndim != 1 or len(offsets) == 0 or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be a non-empty increasing 1-D array of seconds")
    return _run(lambda: _open_loop_trace(target, offsets, max_connections, drain_s, timeout_s))


def _run(coro_factory: Callable[[], object]) -> Any:
    try:
        import uvloop
    except ImportError:  # plain asyncio works, with a slower client
        return asyncio.run(coro_factory())  # type: ignore[arg-type]
    return uvloop.run(coro_factory())  # type: ignore[arg-type]


def closed_loop(
    target: HttpTarget,
    concurrency: int,
    duration_s: float = 3.0,
    warmup_s: float = 1.0,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Run ``concurrency`` back-to-back senders for ``warmup_s + duration_s`` seconds."""
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
    _check_times(duration_s, warmup_s)
    return _run(lambda: _closed_loop(target, concurrency, duration_s, warmup_s, timeout_s))


def open_loop(
    target: HttpTarget,
    rate: float,
    duration_s: float = 3.0,
    warmup_s: float = 1.0,
    max_connections: int = 256,
    drain_s: float = 5.0,
    seed: int = 0,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Send at Poisson arrivals of ``rate`` requests/s; latency from the scheduled time."""
    if not isinstance(rate, int | float) or not rate > 0:
        raise ValueError(f"rate must be a positive number of requests/s, got {rate!r}")
    if not isinstance(max_connections, int) or max_connections < 1:
        raise ValueError(f"max_connections must be a positive int, got {max_connections!r}")
    _check_times(duration_s, warmup_s)
    return _run(
        lambda: _open_loop(
            target, float(rate), duration_s, warmup_s, max_connections, drain_s, seed, timeout_s
        )
    )


def _check_times(duration_s: float, warmup_s: float) -> None:
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    if not warmup_s >= 0:
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s!r}")


def request_once(
    target: HttpTarget, body_index: int = 0, timeout_s: float = 30.0
) -> tuple[int, bytes]:
    """Send one request and return ``(status, body)``: a smoke check before timing."""

    async def one() -> tuple[int, bytes]:
        conn = await _connect(target.host, target.port)
        try:
            return await asyncio.wait_for(
                conn.send(target.encoded_requests()[body_index]), timeout_s
            )
        finally:
            conn.close()

    return asyncio.run(one())
