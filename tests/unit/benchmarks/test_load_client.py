"""The load benchmark's HTTP client and figure parsing, against a real local HTTP server.

The server is a small asyncio HTTP/1.1 server in a background thread (no Ray): it can
delay, serialise (one request at a time, so it has a known capacity), fail with a status,
or answer with chunked encoding, which is what the client must cope with.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from benchmarks._load_client import (
    HttpTarget,
    _parse_response,
    closed_loop,
    latency_summary,
    open_loop,
    poisson_schedule,
    request_once,
)
from benchmarks._triton_perf_analyzer import parse_client_summary, parse_csv


class LocalServer:
    """``POST /ok`` (optionally delayed / serialised), ``/chunked``, ``/fail`` (500)."""

    def __init__(self, delay_s: float = 0.0, serial: bool = False) -> None:
        self.delay_s = delay_s
        self.serial = serial
        self.bodies_seen: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.port = 0

    def __enter__(self) -> LocalServer:
        self.thread.start()
        assert self.ready.wait(10), "test server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.lock = asyncio.Lock()
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                length = next(
                    int(h.split(":")[1])
                    for h in lines[1:]
                    if h.lower().startswith("content-length")
                )
                body = await reader.readexactly(length)
                self.bodies_seen.append(body)
                if self.serial:
                    async with self.lock:
                        await asyncio.sleep(self.delay_s)
                elif self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if path == "/fail":
                    msg = b'{"error": "bad field x"}'
                    writer.write(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: "
                        + str(len(msg)).encode()
                        + b"\r\n\r\n"
                        + msg
                    )
                elif path == "/chunked":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                    )
                else:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: "
                        + str(len(body)).encode()
                        + b"\r\n\r\n"
                        + body
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def target(server: LocalServer, path: str = "/ok", bodies=(b'{"a": 1}', b'{"b": 2}')):
    return HttpTarget("127.0.0.1", server.port, path, list(bodies))


# --- argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"port": 0}, ValueError, "port"),
        ({"path": "v1/decide"}, ValueError, "path"),
        ({"bodies": []}, ValueError, "bodies"),
        ({"bodies": ["text"]}, TypeError, "bodies[0]"),
    ],
)
def test_target_rejects_bad_arguments(kwargs, exc, word):
    args = {"host": "127.0.0.1", "port": 8000, "path": "/x", "bodies": [b"{}"]} | kwargs
    with pytest.raises(exc, match=word.replace("[", r"\[")):
        HttpTarget(**args)


def test_run_functions_reject_bad_arguments():
    t = HttpTarget("127.0.0.1", 8000, "/x", [b"{}"])
    with pytest.raises(ValueError, match="concurrency"):
        closed_loop(t, 0)
    with pytest.raises(ValueError, match="rate"):
        open_loop(t, 0)
    with pytest.raises(ValueError, match="duration_s"):
        closed_loop(t, 1, duration_s=0)
    with pytest.raises(ValueError, match="max_connections"):
        open_loop(t, 10, max_connections=0)


def test_encoded_request_is_complete_http():
    t = HttpTarget("127.0.0.1", 8000, "/v1/decide", [b'{"k": 1}'], extra_headers=(("X-Test", "1"),))
    (req,) = t.encoded_requests()
    head, body = req.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/decide HTTP/1.1\r\n")
    assert b"Content-Length: 8" in head and b"X-Test: 1" in head
    assert body == b'{"k": 1}'


# --- response parsing --------------------------------------------------------------------


def test_parse_content_length_waits_for_whole_body():
    full = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + b"HTTP/1.1 200"
    assert _parse_response(bytearray(full[:30])) is None
    status, body, used, close = _parse_response(bytearray(full))
    assert (status, body, close) == (200, b"hello", False)
    assert full[used:] == b"HTTP/1.1 200"


def test_parse_chunked_and_connection_close():
    raw = (
        b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n"
    )
    assert _parse_response(bytearray(raw[:-3])) is None
    status, body, used, close = _parse_response(bytearray(raw))
    assert (status, body, used, close) == (503, b"busy", len(raw), True)


def test_parse_rejects_garbage():
    with pytest.raises(ConnectionError, match="status line"):
        _parse_response(bytearray(b"garbage\r\n\r\n"))


# --- statistics --------------------------------------------------------------------------


def test_latency_summary_uses_observed_values():
    lat = np.arange(1, 101, dtype=np.float64) / 1000.0  # 1..100 ms
    s = latency_summary(lat)
    assert s["p50_ms"] == pytest.approx(50.0)
    assert s["p95_ms"] == pytest.approx(95.0)
    assert s["p99_ms"] == pytest.approx(99.0)
    assert s["max_ms"] == pytest.approx(100.0)
    assert s["mean_ms"] == pytest.approx(50.5)


def test_latency_summary_unanswered_requests_reach_p99():
    lat = np.concatenate([np.full(97, 0.001), np.full(3, math.inf)])
    s = latency_summary(lat)
    assert s["p50_ms"] == pytest.approx(1.0) and math.isinf(s["p99_ms"])
    assert math.isnan(latency_summary(np.array([]))["p50_ms"])
    with pytest.raises(ValueError, match="1-D"):
        latency_summary(np.zeros((2, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_poisson_schedule_has_the_requested_rate(seed):
    offsets = poisson_schedule(2000.0, 5.0, seed)
    assert np.all(np.diff(offsets) > 0) and offsets[-1] < 5.0
    # 10,000 expected arrivals: the count's standard deviation is 100.
    assert abs(len(offsets) - 10_000) < 500, f"seed={seed}"
    gaps = np.diff(offsets)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=0.05)  # exponential: cv=1
    with pytest.raises(ValueError, match="rate"):
        poisson_schedule(-1.0, 1.0, seed)


# --- against a real server ---------------------------------------------------------------


def test_request_once_and_chunked_response():
    with LocalServer() as server:
        assert request_once(target(server)) == (200, b'{"a": 1}')
        assert request_once(target(server, "/chunked")) == (200, b"abcde")


def test_closed_loop_bounded_by_server_delay():
    with LocalServer(delay_s=0.005) as server:
        r = closed_loop(target(server), concurrency=4, duration_s=1.0, warmup_s=0.2)
        assert r.errors == 0 and r.ok > 50
        # 4 in flight, each >= 5 ms: at most 800 requests/s.
        assert r.throughput_rps <= 4 / 0.005 * 1.05
        assert r.p50_ms >= 5.0 and r.p50_ms <= r.p95_ms <= r.p99_ms <= r.max_ms
        # Bodies are sent round-robin.
        assert {b'{"a": 1}', b'{"b": 2}'} <= set(server.bodies_seen)


def test_closed_loop_counts_http_errors():
    with LocalServer() as server:
        r = closed_loop(target(server, "/fail"), concurrency=2, duration_s=0.3, warmup_s=0.0)
        assert r.ok == 0 and r.errors > 0
        assert "HTTP 500" in r.first_error and "bad field x" in r.first_error


def test_open_loop_meets_a_light_rate():
    with LocalServer() as server:
        r = open_loop(target(server), rate=200.0, duration_s=1.0, warmup_s=0.2, seed=3)
        assert r.errors == 0 and r.incomplete == 0
        assert 120 <= r.ok <= 290  # Poisson count around 200 (sd ~14), seed 3
        assert r.p50_ms < 50


def test_open_loop_charges_queueing_behind_a_slow_server():
    # One request at a time, 20 ms each: capacity 50/s, offered 100/s. A closed-loop
    # client would report ~20 ms; measured from the schedule, the backlog grows to
    # hundreds of milliseconds within a second.
    with LocalServer(delay_s=0.02, serial=True) as server:
        r = open_loop(target(server), rate=100.0, duration_s=1.0, warmup_s=0.0, drain_s=5.0, seed=1)
        assert r.errors == 0
        assert r.p99_ms > 300, r
        assert r.throughput_rps <= 55


def test_open_loop_reports_unanswered_requests():
    with LocalServer(delay_s=2.0) as server:
        started = time.perf_counter()
        r = open_loop(target(server), rate=50.0, duration_s=0.5, warmup_s=0.0, drain_s=0.3, seed=2)
        assert time.perf_counter() - started < 3.0  # the drain timeout bounds the run
        assert r.ok == 0 and r.incomplete > 0 and math.isinf(r.p50_ms)


# --- perf_analyzer's output --------------------------------------------------------------

# Verbatim output of perf_analyzer 2.48 (-f CSV and the console report) against Triton.
PA_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,"
    "Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,"
    "p50 latency,p90 latency,p95 latency,p99 latency\n"
    "8,1301.92,79,340,2388,76,3012,234,0,5837,6830,8895,21140"
)
PA_STDOUT = "\n".join(
    [
        "Request concurrency: 8",
        "  Client: ",  # perf_analyzer ends this line with a space
        "    Request count: 9643",
        "    Throughput: 1335.38 infer/sec",
        "    Avg latency: 5983 usec (standard deviation 1440 usec)",
        "    p50 latency: 5730 usec",
        "  Server: ",
        "    Inference count: 9643",
        "    Avg request latency: 5619 usec (overhead 5 usec + queue 2610 usec)",
    ]
)


def test_parse_perf_analyzer_output():
    (row,) = parse_csv(PA_CSV)
    assert row["Concurrency"] == 8 and row["Inferences/Second"] == pytest.approx(1301.92)
    assert row["p99 latency"] == 21140
    assert parse_client_summary(PA_STDOUT) == {"Request count": 9643.0, "Avg latency": 5983.0}
    with pytest.raises(ValueError, match="empty"):
        parse_csv("Concurrency,Inferences/Second\n")
