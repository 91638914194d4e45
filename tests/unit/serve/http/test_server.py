"""The gateway's own HTTP/1.1 server over real loopback sockets (no Ray, no mocks).

Each server runs on an event loop in a background thread (uvloop, as the data plane
runs it, and asyncio's, its fallback); the tests talk to it with blocking sockets. Every
client socket has a 5 s timeout so that a server that fails to answer fails the test
instead of hanging it; none of the assertions depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from starlette.responses import JSONResponse

from nudgeserve.serve.http.data_plane import new_event_loop
from nudgeserve.serve.http.server import (
    MAX_PIPELINED,
    HttpServer,
    encode_response,
    error_response,
    listening_socket,
)

HOST = "127.0.0.1"
TIMEOUT_S = 5.0  # a safety net against hangs; answers on loopback take milliseconds


# -- the server's loop ---------------------------------------------------------------------


class LoopThread:
    """An event loop running in a daemon thread; ``run`` waits for a coroutine on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine, timeout: float = TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, fn, *args):
        """Run the plain function ``fn(*args)`` on the loop's thread and return its value."""

        async def call():
            return fn(*args)

        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT_S)
        self.loop.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_thread(request):
    loop = new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
    lt = LoopThread(loop)
    yield lt
    lt.close()


class App:
    """The handler: ``/echo`` answers what it got, ``/slow`` waits for ``gate``, ``/boom``
    raises, ``/who`` names the app. Records the paths it was called with."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.calls: list[str] = []
        self.gate = asyncio.Event()

    async def __call__(self, request):
        path = request.scope["path"]
        self.calls.append(path)
        if path == "/slow":
            await self.gate.wait()
        elif path == "/boom":
            raise RuntimeError("handler bug")
        body = await request.body()
        streamed = b"".join([chunk async for chunk in request.stream()])
        assert streamed == body
        return JSONResponse(
            {
                "app": self.name,
                "method": request.method,
                "path": path,
                "query": request.scope["query_string"].decode(),
                "body": body.decode("latin-1"),
                "headers": dict(request.headers),
            }
        )


@pytest.fixture
def serve(loop_thread):
    """``serve(handler, **kwargs)`` -> a started ``HttpServer`` on 127.0.0.1 (``port``: 0
    for an ephemeral port); every server is closed at the end of the test."""
    servers = []

    def start(handler, port: int = 0, **kwargs) -> HttpServer:
        server = HttpServer(handler, loop=loop_thread.loop, **kwargs)
        loop_thread.run(server.start(HOST, port))
        servers.append(server)
        return server

    yield start
    for server in servers:
        loop_thread.run(server.close())


# -- the client ------------------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)


class Client:
    """A raw HTTP/1.1 client on one connection: writes bytes, reads answers in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=TIMEOUT_S)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buf += data

    def read(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Answer(int(status), headers, body)

    def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> Answer:
        self.send(request_bytes(method, path, body, headers))
        return self.read()

    def closed_by_server(self) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def request_bytes(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: test\r\n{headers}"
    if body and "transfer-encoding" not in headers.lower():
        head += f"content-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


@pytest.fixture
def clients():
    opened: list[Client] = []

    def connect(port: int) -> Client:
        client = Client(port)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def wait_until(predicate, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


# -- encoding --------------------------------------------------------------------------------


def test_encode_response_adds_length_and_close():
    data = encode_response(200, [(b"content-type", b"text/plain")], b"hello", close=True)
    assert data == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n"
        b"connection: close\r\n\r\nhello"
    )
    # A content-length already among the headers is not repeated.
    data = encode_response(201, [(b"Content-Length", b"2")], b"ok", close=False)
    assert data == b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"


def test_error_response_is_json():
    data = error_response(503, "busy", ((b"retry-after", b"3"),), close=True)
    head, body = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"content-type: application/json" in head
    assert b"retry-after: 3" in head
    assert b"connection: close" in head
    assert json.loads(body) == {"error": "busy"}


# -- requests and connections ----------------------------------------------------------------


def test_echo_json(serve, clients):
    app = App()
    server = serve(app)
    client = clients(server.address[1])
    answer = client.request("POST", "/echo?a=1&b=2", b'{"x": 1}', "X-Custom: Yes\r\n")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    got = answer.json()
    assert got["method"] == "POST"
    assert got["path"] == "/echo"
    assert got["query"] == "a=1&b=2"
    assert got["body"] == '{"x": 1}'
    assert got["headers"]["x-custom"] == "Yes"  # names lower-case, values as sent
    assert got["headers"]["content-length"] == "8"
    assert "connection" not in answer.headers  # keep-alive is HTTP/1.1's default


def test_keep_alive_serves_several_requests_on_one_connection(serve, clients):
    app = App()
    server = serve(app)
    client = clients(server.address[1])
    for i in range(5):
        answer = client.request("POST", f"/echo?i={i}", f"body {i}".encode())
        assert answer.status == 200
        assert answer.json()["query"] == f"i={i}"
        assert answer.json()["body"] == f"body {i}"
    assert len(server.connections) == 1
    assert app.calls == ["/echo"] * 5


def test_pipelined_requests_answered_in_order(serve, clients):
    server = serve(App())
    client = clients(server.address[1])
    client.send(
        request_bytes("POST", "/echo", b"first") + request_bytes("POST", "/echo", b"second")
    )
    assert client.read().json()["body"] == "first"
    assert client.read().json()["body"] == "second"
    # Still open for more.
    assert client.request("GET", "/echo").status == 200


def test_many_pipelined_requests_pause_and_resume_reading(serve, clients):
    # More than MAX_PIPELINED requests in one write: the connection stops reading while
    # MAX_PIPELINED wait, then resumes; every request is answered, in order.
    server = serve(App())
    client = clients(server.address[1])
    n = MAX_PIPELINED * 2 + 5
    client.send(b"".join(request_bytes("POST", "/echo", b"%d" % i) for i in range(n)))
    assert [client.read().json()["body"] for _ in range(n)] == [str(i) for i in range(n)]


def test_chunked_request_body(serve, clients):
    server = serve(App())
    client = clients(server.address[1])
    answer = client.request(
        "POST",
        "/echo",
        chunked(b"hello, ", b"chunked ", b"world"),
        "transfer-encoding: chunked\r\n",
    )
    assert answer.status == 200
    assert answer.json()["body"] == "hello, chunked world"
    # The connection is reusable after a chunked body.
    assert client.request("POST", "/echo", b"next").json()["body"] == "next"


def test_declared_length_over_max_body_is_refused_without_reading_the_body(serve, clients):
    app = App()
    server = serve(app, max_body=1000)
    client = clients(server.address[1])
    # Only the headers are sent: the answer comes without the server waiting for the body.
    client.send(b"POST /echo HTTP/1.1\r\nhost: test\r\ncontent-length: 1000000\r\n\r\n")
    answer = client.read()
    assert answer.status == 413
    error = answer.json()["error"]
    assert "1000" in error and "max_body_bytes" in error
    assert answer.headers["connection"] == "close"
    assert client.closed_by_server()
    assert app.calls == []


def test_chunked_body_growing_past_max_body_is_refused(serve, clients):
    app = App()
    server = serve(app, max_body=64)
    client = clients(server.address[1])
    body = chunked(b"a" * 40, b"b" * 40, b"c" * 40)
    client.send(request_bytes("POST", "/echo", body, "transfer-encoding: chunked\r\n"))
    answer = client.read()
    assert answer.status == 413
    assert "max_body_bytes" in answer.json()["error"]
    assert client.closed_by_server()
    assert app.calls == []


def test_body_exactly_max_body_is_accepted(serve, clients):
    server = serve(App(), max_body=64)
    client = clients(server.address[1])
    assert client.request("POST", "/echo", b"x" * 64).json()["body"] == "x" * 64
    body = chunked(b"y" * 32, b"y" * 32)
    answer = client.request("POST", "/echo", body, "transfer-encoding: chunked\r\n")
    assert answer.json()["body"] == "y" * 64


def test_malformed_request_line_gets_400(serve, clients):
    app = App()
    server = serve(app)
    client = clients(server.address[1])
    client.send(b"\x00\x01 this is not HTTP\r\n\r\n")
    answer = client.read()
    assert answer.status == 400
    assert "malformed" in answer.json()["error"]
    assert answer.headers["connection"] == "close"
    assert client.closed_by_server()
    assert app.calls == []


def test_connection_close_request_closes_after_the_answer(serve, clients):
    server = serve(App())
    client = clients(server.address[1])
    answer = client.request("GET", "/echo", headers="connection: close\r\n")
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert client.closed_by_server()


def test_http_10_without_keep_alive_closes(serve, clients):
    server = serve(App())
    client = clients(server.address[1])
    client.send(b"GET /echo HTTP/1.0\r\n\r\n")
    answer = client.read()
    assert answer.status == 200
    assert answer.headers["connection"] == "close"
    assert client.closed_by_server()


def test_half_closed_client_gets_its_answers_then_the_server_closes(serve, clients):
    server = serve(App())
    client = clients(server.address[1])
    client.send(request_bytes("POST", "/echo", b"one") + request_bytes("POST", "/echo", b"two"))
    client.sock.shutdown(socket.SHUT_WR)
    assert client.read().json()["body"] == "one"
    assert client.read().json()["body"] == "two"
    assert client.closed_by_server()


def test_admit_hook_refusal_skips_handler_and_body_and_keeps_connection(serve, clients):
    app = App()
    refusal = error_response(503, "overloaded", ((b"retry-after", b"2"),))
    admitted: list[tuple[str, str]] = []

    def admit(method, path):
        admitted.append((method, path))
        return refusal if path == "/shed" else None

    server = serve(app, admit=admit)
    client = clients(server.address[1])
    answer = client.request("POST", "/shed?q=1", b'{"big": "' + b"x" * 5000 + b'"}')
    assert answer.status == 503
    assert answer.headers["retry-after"] == "2"
    assert answer.json() == {"error": "overloaded"}
    assert "connection" not in answer.headers
    # A refused chunked body is read past too.
    answer = client.request(
        "POST", "/shed", chunked(b"abc", b"def"), "transfer-encoding: chunked\r\n"
    )
    assert answer.status == 503
    # The same connection serves the next request.
    assert client.request("POST", "/echo", b"after").json()["body"] == "after"
    assert app.calls == ["/echo"]
    # The hook sees the method and the path without its query.
    assert admitted == [("POST", "/shed"), ("POST", "/shed"), ("POST", "/echo")]


def test_handler_exception_gives_500_and_the_server_keeps_serving(serve, clients):
    server = serve(App())
    client = clients(server.address[1])
    answer = client.request("GET", "/boom")
    assert answer.status == 500
    assert answer.json() == {"error": "internal error"}
    assert client.closed_by_server()
    assert server.in_flight == 0
    assert clients(server.address[1]).request("GET", "/echo").status == 200


# -- draining --------------------------------------------------------------------------------


def test_drain_refuses_new_requests_and_finishes_those_in_flight(loop_thread, serve, clients):
    app = App()
    server = serve(app, retry_after_s=3)
    port = server.address[1]
    idle = clients(port)
    assert idle.request("GET", "/echo").status == 200
    busy = clients(port)
    busy.send(request_bytes("GET", "/slow"))
    wait_until(lambda: server.in_flight == 1)

    loop_thread.call(server.drain)
    assert server.draining
    # An idle keep-alive connection is closed by drain().
    assert idle.closed_by_server()
    # The next request on a connection still open (its first request in flight) gets 503.
    busy.send(request_bytes("POST", "/echo", b"late"))
    wait_until(lambda: loop_thread.call(lambda: any(c.pending for c in server.connections)))
    # Not idle while a request is in flight.
    assert loop_thread.run(server.wait_idle(0.05)) is False
    # A new connection (the socket still listens) gets 503 with connection: close.
    fresh = clients(port)
    answer = fresh.request("GET", "/echo")
    assert answer.status == 503
    assert answer.headers["connection"] == "close"
    assert answer.headers["retry-after"] == "3"
    assert "shutting down" in answer.json()["error"]
    assert fresh.closed_by_server()

    loop_thread.loop.call_soon_threadsafe(app.gate.set)
    first = busy.read()
    assert first.status == 200
    assert first.json()["path"] == "/slow"
    second = busy.read()
    assert second.status == 503
    assert second.headers["connection"] == "close"
    assert busy.closed_by_server()
    assert loop_thread.run(server.wait_idle(2.0)) is True
    assert app.calls == ["/echo", "/slow"]


def test_close_stops_listening_and_closes_connections(loop_thread, serve, clients):
    server = serve(App())
    port = server.address[1]
    client = clients(port)
    assert client.request("GET", "/echo").status == 200
    loop_thread.run(server.close())
    assert client.closed_by_server()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=TIMEOUT_S).close()


# -- the listening socket --------------------------------------------------------------------


def test_two_servers_share_a_port_with_so_reuseport(loop_thread, serve, clients):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT on this platform")
    first = serve(App("first"))
    port = first.address[1]
    second = serve(App("second"), port=port)
    assert second.address[1] == port
    # The kernel spreads connections over the two sockets by a hash of each connection's
    # addresses: over 32 connections (fresh source ports) both get some, except with
    # probability 2**-31.
    seen = set()
    for _ in range(32):
        client = clients(port)
        answer = client.request("GET", "/who", headers="connection: close\r\n")
        seen.add(answer.json()["app"])
        client.close()
    assert seen == {"first", "second"}
    # With the first one gone, the second answers every connection on the same port.
    loop_thread.run(first.close())
    for _ in range(8):
        client = clients(port)
        answer = client.request("GET", "/who", headers="connection: close\r\n")
        assert answer.json()["app"] == "second"
        client.close()


def _tcp_states(port: int) -> list[str]:
    """The states (hex, /proc/net/tcp) of the IPv4 TCP sockets with local port ``port``."""
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    return [row[3] for row in rows if int(row[1].rsplit(":", 1)[1], 16) == port]


def test_rebind_at_once_while_a_connection_waits_in_time_wait(loop_thread, serve, clients):
    try:
        _tcp_states(0)
    except OSError:
        pytest.skip("needs Linux's /proc/net/tcp")
    first = serve(App("first"))
    port = first.address[1]
    client = clients(port)
    # The server closes first (connection: close), so its side ends in TIME-WAIT.
    assert client.request("GET", "/echo", headers="connection: close\r\n").status == 200
    assert client.closed_by_server()
    client.close()
    loop_thread.run(first.close())
    wait_until(lambda: "06" in _tcp_states(port))  # 06: TCP_TIME_WAIT
    # A socket without SO_REUSEADDR cannot bind the port now...
    plain = socket.socket()
    try:
        with pytest.raises(OSError):
            plain.bind((HOST, port))
    finally:
        plain.close()
    # ...but the next server binds it at once, and answers.
    second = serve(App("second"), port=port)
    assert second.address[1] == port
    assert clients(port).request("GET", "/who").json()["app"] == "second"


def test_listening_socket_options():
    sock = listening_socket(HOST, 0)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        if hasattr(socket, "SO_REUSEPORT"):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getblocking() is False
        assert sock.getsockname()[0] == HOST
    finally:
        sock.close()
