"""The gateway's own HTTP/1.1 server: httptools parsing on an asyncio (uvloop) loop.

Why not uvicorn behind Ray Serve's ingress: measured on 2 cores, a request through Ray's
direct ingress spends more time in the ASGI and replica machinery than in the decision
itself (docs/serving.md, "The data plane"). This server does only what the gateway needs:

- HTTP/1.1 with keep-alive and pipelining (answers in request order per connection),
  ``Content-Length`` and chunked bodies, both bounded by ``max_body_bytes`` (413 and the
  connection closed once the limit is passed; a declared length over it is refused before
  the body is read);
- a listening socket with ``SO_REUSEPORT`` and ``SO_REUSEADDR``: several gateway replicas
  on one node share the port (the kernel spreads connections over them, and one killed
  replica leaves the others answering), and a restart binds at once, whatever sockets of
  the previous process wait in TIME-WAIT;
- an admission hook called when a request's headers are complete: a refused request is
  answered with a prepared 503 (JSON ``{"error": ...}`` and ``Retry-After``) without
  decoding its body, so shedding costs a fraction of serving;
- draining: ``drain()`` makes every new request answer 503 with ``Connection: close`` while
  the ones in flight finish; ``close()`` then stops listening.

The handler gets a ``Request`` with the part of Starlette's request the router reads
(``method``, ``scope["path"]``, ``scope["query_string"]``, ``headers.get``, ``body()``,
``stream()``) and returns an object with ``status_code``, ``body`` and ``raw_headers``
(a Starlette ``Response``). No Ray here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import httptools
import msgspec

logger = logging.getLogger("nudgeserve.http")

_REASONS = {
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    207: b"Multi-Status",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Entity",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
# Requests queued on one connection (pipelined) before it stops reading.
MAX_PIPELINED = 32
MAX_HEADER_BYTES = 64 * 1024


class Headers(dict):
    """Request headers by lower-case name (the last value wins; what the router needs)."""

    __slots__ = ()


class Request:
    """One parsed request, with the part of Starlette's ``Request`` the router uses."""

    __slots__ = ("method", "scope", "headers", "_body")

    def __init__(self, method: str, path: str, query: bytes, headers: Headers, body: bytes) -> None:
        self.method = method
        self.scope = {"type": "http", "path": path, "query_string": query}
        self.headers = headers
        self._body = body

    async def body(self) -> bytes:
        return self._body

    async def stream(self):
        yield self._body


def encode_response(status: int, raw_headers: Any, body: bytes, close: bool) -> bytes:
    """HTTP/1.1 bytes of one answer (``raw_headers``: (name, value) byte pairs)."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    has_length = False
    for name, value in raw_headers:
        if name.lower() == b"content-length":
            has_length = True
        parts.append(name + b": " + value + b"\r\n")
    if not has_length:
        parts.append(b"content-length: %d\r\n" % len(body))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


def error_response(status: int, message: str, extra: tuple = (), close: bool = False) -> bytes:
    """A JSON ``{"error": message}`` answer."""
    body = msgspec.json.encode({"error": message})
    headers = [(b"content-type", b"application/json"), *extra]
    return encode_response(status, headers, body, close)


Handler = Callable[[Request], Awaitable[Any]]
# (method, path) -> None to admit, or the bytes of the answer that refuses it.
Admit = Callable[[str, str], "bytes | None"]


class _Connection(asyncio.Protocol):
    __slots__ = (
        "server",
        "transport",
        "parser",
        "url",
        "method",
        "path",
        "query",
        "headers",
        "body",
        "size",
        "refused",
        "pending",
        "worker",
        "closing",
        "paused",
        "header_bytes",
        "_name",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: collections.deque = collections.deque()
        self.worker: asyncio.Task | None = None
        self.closing = False
        self.paused = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.method = ""
        self.path = ""
        self.query = b""
        self.headers = Headers()
        self.body: list[bytes] = []
        self.size = 0
        self.refused: bytes | None = None
        self.header_bytes = 0
        self._name = b""

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        # Answers still being computed are finished (their decisions logged) and dropped.
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # answered and closing (e.g. after a 413): the rest is not read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._fail(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        # Half-closed by the client: answer what is queued, then close.
        self.closing = True
        if self.worker is None or self.worker.done():
            self._close()
        return True

    # -- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("request headers too large")
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        server = self.server
        self.method = self.parser.get_method().decode("ascii", "replace")
        path, _, self.query = self.url.partition(b"?")
        self.path = path.decode("latin-1")
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > server.max_body:
            # Refused before the body is read: answer now, read no more of this connection.
            self._too_large()
            return
        if server.draining:
            self.refused = server.draining_answer
            return
        self.refused = server.admit(self.method, self.path)

    def on_body(self, chunk: bytes) -> None:
        if self.refused is not None:
            return  # refused already: the body is read past, not kept
        self.size += len(chunk)
        if self.size > self.server.max_body:
            self._too_large()
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        server = self.server
        keep_alive = self.parser.should_keep_alive() and not server.draining
        if self.closing:
            return
        refused = self.refused
        if refused is not None:
            self.pending.append((None, refused, keep_alive))
        else:
            body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
            request = Request(self.method, self.path, self.query, self.headers, body)
            self.pending.append((request, None, keep_alive))
        if len(self.pending) >= MAX_PIPELINED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._start_worker()

    def _start_worker(self) -> None:
        if self.worker is None or self.worker.done():
            self.worker = self.server.loop.create_task(self._work())

    def _too_large(self) -> None:
        self.refused = self.server.too_large_answer
        self.body = []
        self.pending.append((None, self.server.too_large_answer, False))
        self.closing = True
        self._start_worker()

    # -- answering -------------------------------------------------------------------------

    async def _work(self) -> None:
        server = self.server
        while self.pending:
            request, ready, keep_alive = self.pending.popleft()
            if ready is None:
                server.in_flight += 1
                try:
                    response = await server.handler(request)
                    data = encode_response(
                        response.status_code,
                        response.raw_headers,
                        response.body,
                        close=not keep_alive or (server.draining and not self.pending),
                    )
                except Exception as exc:  # the handler answers its own errors; last resort
                    logger.error("unhandled error in the HTTP handler", exc_info=exc)
                    data = error_response(500, "internal error", close=True)
                    keep_alive = False
                finally:
                    server.in_flight -= 1
                    server.answered += 1
            else:
                data = ready
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            transport.write(data)
            if not keep_alive or (server.draining and not self.pending):
                self._close()
                return
            if self.paused and len(self.pending) < MAX_PIPELINED // 2:
                self.paused = False
                transport.resume_reading()
        if self.closing:
            self._close()

    def _fail(self, status: int, message: str) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(error_response(status, message, close=True))
        self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """One listening socket served on ``loop`` (see the module docstring).

    handler: ``async (Request) -> response``. admit: ``(method, path) -> None`` to serve
    the request, or the bytes of the answer refusing it (called when its headers are in,
    before its body is decoded). max_body: larger bodies get 413. retry_after_s: the
    ``Retry-After`` of the answers while draining.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        loop: asyncio.AbstractEventLoop,
        admit: Admit | None = None,
        max_body: int = 8 << 20,
        retry_after_s: float = 1.0,
    ) -> None:
        self.handler = handler
        self.loop = loop
        self.admit: Admit = admit or (lambda method, path: None)
        self.max_body = max_body
        self.connections: set[_Connection] = set()
        self.in_flight = 0
        self.answered = 0
        self.draining = False
        retry = (b"retry-after", b"%d" % max(1, round(retry_after_s)))
        self.draining_answer = error_response(
            503, "the server is shutting down; retry on another replica", (retry,), close=True
        )
        self.too_large_answer = error_response(
            413,
            f"body exceeds the limit of {max_body} bytes (server.max_body_bytes)",
            close=True,
        )
        self._server: asyncio.base_events.Server | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> None:
        sock = listening_socket(host, port)
        self.address = sock.getsockname()[:2]
        self._server = await self.loop.create_server(lambda: _Connection(self), sock=sock)

    def drain(self) -> None:
        """New requests answer 503 with ``Connection: close`` from now on; idle
        keep-alive connections are closed."""
        self.draining = True
        for conn in list(self.connections):
            if not conn.pending and (conn.worker is None or conn.worker.done()):
                conn._close()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (True) or ``timeout_s`` passed (False)."""
        deadline = self.loop.time() + timeout_s
        while self.in_flight or any(c.pending for c in self.connections):
            if self.loop.time() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self.connections):
            conn._close()
