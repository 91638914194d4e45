"""The data plane (``http.data_plane``): a router served by the gateway's HTTP server on
its own loop thread, over real loopback sockets. No Ray.

A tiny router stands in for the gateway's: it answers with Starlette responses and has
the attributes the data plane reads (``metrics``, ``scorers``, ``draining``). Client
sockets time out after 5 s, a safety net against a hang, not a speed requirement.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import json
import socket
import threading
import time

import pytest
from starlette.responses import JSONResponse

from nudgeserve.serve.engine.batcher import MicroBatcher
from nudgeserve.serve.http.data_plane import DataPlane
from nudgeserve.serve.http.server import listening_socket
from nudgeserve.serve.metrics import ServeMetrics

HOST = "127.0.0.1"
TIMEOUT_S = 5.0
THREAD = "nudgeserve-data-plane"


class TinyRouter:
    """Answers every path with what it got; ``/slow`` waits for ``gate``."""

    def __init__(self, scorers=None) -> None:
        self.metrics = ServeMetrics()
        self.scorers = scorers or {}
        self.draining = False
        self.gate = asyncio.Event()
        self.calls: list[str] = []
        self.threads: set[str] = set()

    async def handle(self, request):
        path = request.scope["path"]
        self.calls.append(path)
        self.threads.add(threading.current_thread().name)
        if path == "/slow":
            await self.gate.wait()
        body = await request.body()
        return JSONResponse({"path": path, "body": body.decode(), "draining": self.draining})


class Scorer:
    def __init__(self, batchers) -> None:
        self.batchers = batchers


class FixedWait:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def predicted_wait_s(self) -> float:
        return self.seconds


@pytest.fixture
def planes():
    """``planes(router_or_build, **kwargs)`` -> a started ``DataPlane`` on an ephemeral
    port; stopped at the end of the test."""
    started: list[DataPlane] = []

    def start(router, *, budget_s: float = 0.0, listen=(HOST, 0), **kwargs) -> DataPlane:
        build = router if callable(router) and not hasattr(router, "handle") else lambda: router
        plane = DataPlane(
            build,
            listen,
            budget_s=budget_s,
            retry_after_s=kwargs.pop("retry_after_s", 1.0),
            max_body=kwargs.pop("max_body", 1 << 20),
        )
        started.append(plane)
        plane.start()
        return plane

    yield start
    for plane in started:
        plane.stop(grace_s=0.5)
    # DataPlane's set-up freezes the collector's generations (a server process's heap lives
    # as long as the process); a test session's does not.
    gc.unfreeze()


def port_of(plane: DataPlane) -> int:
    return plane.server.address[1]


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), json.loads(answer.read())
    finally:
        conn.close()


def sync(plane: DataPlane) -> None:
    """Wait until the callbacks already handed to the plane's loop have run."""
    plane.call(asyncio.sleep(0)).result(TIMEOUT_S)


def wait_until(predicate, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def test_serves_http_on_its_own_loop_thread(planes):
    router = TinyRouter()
    built_on = []

    def build():
        built_on.append((threading.current_thread().name, asyncio.get_running_loop()))
        return router

    plane = planes(build)
    assert built_on == [(THREAD, plane.loop)]
    assert plane.router is router
    port = port_of(plane)
    assert port > 0
    status, _, body = request(port, "POST", "/v1/anything", b"hello")
    assert status == 200
    assert body == {"path": "/v1/anything", "body": "hello", "draining": False}
    assert router.threads == {THREAD}


def test_call_runs_a_coroutine_on_the_data_plane_loop(planes):
    plane = planes(TinyRouter())

    async def where(x):
        await asyncio.sleep(0)
        return threading.current_thread().name, asyncio.get_running_loop(), x * 2

    name, loop, doubled = plane.call(where(21)).result(TIMEOUT_S)
    assert (name, loop, doubled) == (THREAD, plane.loop, 42)

    async def fails():
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        plane.call(fails()).result(TIMEOUT_S)


def test_without_listen_there_is_no_server_but_call_works(planes):
    router = TinyRouter()
    plane = planes(router, listen=None)
    assert plane.server is None

    async def through_router():
        class Req:
            scope = {"path": "/direct"}

            async def body(self):
                return b"x"

        return (await router.handle(Req())).status_code

    assert plane.call(through_router()).result(TIMEOUT_S) == 200


def test_admission_sheds_decisions_over_the_budget(planes):
    wait = FixedWait(1.0)
    router = TinyRouter({"uc": Scorer({"decide": wait})})
    plane = planes(router, budget_s=0.05, retry_after_s=2.0)
    port = port_of(plane)
    status, headers, body = request(port, "POST", "/v1/decide", b"{}")
    assert status == 503
    assert headers["retry-after"] == "2"
    assert "latency_budget_ms" in body["error"]
    assert request(port, "GET", "/v2/health/ready")[0] == 200  # cheap routes still served
    wait.seconds = 0.0
    assert request(port, "POST", "/v1/decide", b"{}")[0] == 200
    assert router.calls == ["/v2/health/ready", "/v1/decide"]
    assert (plane.admission.admitted, plane.admission.shed) == (1, 1)


def test_predicted_wait_reads_the_scorers_batchers(planes):
    async def run(items):
        return items

    batcher = MicroBatcher(run, max_batch_size=8)
    router = TinyRouter(
        {"a": Scorer({"x": batcher, "y": FixedWait(0.25)}), "b": object()}  # b: no batchers
    )
    plane = planes(router)
    assert plane.predicted_wait_s() == 0.25
    router.scorers["a"].batchers.pop("y")
    assert plane.predicted_wait_s() == 0.0  # idle: a new call's batch starts at once


class Backlogged(Scorer):
    """A scorer whose decision log has had a batch waiting for its commit so long."""

    def __init__(self, seconds: float) -> None:
        super().__init__({})
        self.seconds = seconds

    def commit_wait_s(self) -> float:
        return self.seconds


def test_predicted_wait_counts_the_decision_logs_backlog(planes):
    router = TinyRouter({"a": Scorer({"x": FixedWait(0.01)}), "b": Backlogged(0.3)})
    plane = planes(router, budget_s=0.05)
    assert plane.predicted_wait_s() == 0.3  # the log's backlog is the longer wait
    assert request(port_of(plane), "POST", "/v1/decide", b"{}")[0] == 503
    router.scorers["b"].seconds = 0.0
    assert plane.predicted_wait_s() == 0.01
    assert request(port_of(plane), "POST", "/v1/decide", b"{}")[0] == 200


def test_drain_refuses_new_requests_and_marks_the_router(planes):
    router = TinyRouter()
    plane = planes(router)
    port = port_of(plane)
    assert request(port, "GET", "/before")[0] == 200
    plane.drain()
    sync(plane)
    assert router.draining is True
    status, headers, body = request(port, "GET", "/after")
    assert status == 503
    assert headers["connection"] == "close"
    assert "shutting down" in body["error"]
    assert router.calls == ["/before"]


def test_stop_finishes_in_flight_runs_close_and_releases_the_port(planes):
    router = TinyRouter()
    plane = planes(router)
    port = port_of(plane)
    answers = []
    client = threading.Thread(target=lambda: answers.append(request(port, "GET", "/slow")))
    client.start()
    wait_until(lambda: router.calls == ["/slow"])

    closed_on = []
    stopper = threading.Thread(
        target=lambda: plane.stop(
            grace_s=TIMEOUT_S, close=lambda: closed_on.append(threading.current_thread().name)
        )
    )
    stopper.start()
    wait_until(lambda: router.draining)  # stop() drains first, then waits for /slow
    assert closed_on == []
    plane.loop.call_soon_threadsafe(router.gate.set)
    client.join(TIMEOUT_S)
    stopper.join(TIMEOUT_S)
    assert not stopper.is_alive()
    status, headers, body = answers[0]
    assert status == 200 and body["path"] == "/slow"
    assert closed_on == [THREAD]
    assert not plane._thread.is_alive()
    assert plane.loop.is_closed()

    # Nothing listens on the port any more...
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=TIMEOUT_S).close()
    # ...so a socket without SO_REUSEPORT can listen on it (it could not while the
    # plane's socket listened), and so can the next server's.
    alone = socket.socket()
    try:
        alone.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        alone.bind((HOST, port))
        alone.listen()
    finally:
        alone.close()
    listening_socket(HOST, port).close()
    plane.stop()  # a second stop does nothing


def test_stop_gives_up_on_requests_past_the_grace_period(planes):
    router = TinyRouter()
    plane = planes(router)
    port = port_of(plane)
    errors = []

    def stuck_client():
        try:
            request(port, "GET", "/slow")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(exc)

    client = threading.Thread(target=stuck_client)
    client.start()
    wait_until(lambda: router.calls == ["/slow"])
    closed = []
    plane.stop(grace_s=0.1, close=lambda: closed.append(True))
    client.join(TIMEOUT_S)
    assert closed == [True]
    assert not plane._thread.is_alive()
    assert len(errors) == 1  # its connection closed without an answer
    # The handler's task was left pending on the stopped loop; collect it now, so that
    # asyncio's "Task was destroyed but it is pending!" is logged in this test.
    gc.collect()


def test_build_error_is_raised_by_start():
    error = RuntimeError("checkpoint missing")

    def build():
        raise error

    plane = DataPlane(build, (HOST, 0), budget_s=0.0, retry_after_s=1.0, max_body=1024)
    with pytest.raises(RuntimeError) as caught:
        plane.start()
    assert caught.value is error
    plane._thread.join(TIMEOUT_S)
    assert not plane._thread.is_alive()
    assert plane.loop.is_closed()
    plane.stop()  # nothing to stop: returns at once


def test_bind_error_is_raised_by_start(planes):
    taken = socket.socket()  # listening without SO_REUSEPORT: the plane cannot share it
    try:
        taken.bind((HOST, 0))
        taken.listen()
        plane = DataPlane(
            TinyRouter, (HOST, taken.getsockname()[1]), budget_s=0, retry_after_s=1, max_body=1
        )
        with pytest.raises(OSError):
            plane.start()
    finally:
        taken.close()
        gc.unfreeze()
