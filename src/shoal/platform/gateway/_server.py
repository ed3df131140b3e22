"""The gateway's own HTTP/1.1 server: asyncio protocols on uvloop, requests parsed by httptools.

Chosen by measurement (``docs/benchmarks.md``, "Gateway"): behind uvicorn and the ASGI
chassis middleware the gateway spent ~80 µs of CPU per proxied request, of which uvicorn and
its ASGI message dicts were about a third; this protocol hands the parsed head straight to the
gateway's handler and writes each answer that arrived whole in one ``write``.

One :class:`Connection` per client connection: it parses, runs one request at a time (a
pipelined request waits, with reading paused), streams the request body to the handler with
flow control (reading pauses above :data:`HIGH_WATER` unconsumed bytes) and writes the answer
with flow control the other way. Idle keep-alive connections (and a head still arriving)
close after ``keepalive`` seconds; a body that stalls for ``body_timeout`` seconds, or a small
one not whole within ``small_body_timeout``, fails with 408. A head over :data:`MAX_HEAD`
bytes is answered 431, a malformed one 400 (RFC 9112's checks: one ``Host``, HTTP/1.0 or 1.1
only, no fragment, no transfer coding but ``chunked``), then the connection closes. Beyond
``max_connections`` open connections a new one is answered 503 and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import resource
import signal
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any, cast

import httptools

from shoal._logging import batch_writes, get_logger
from shoal._problem import PROBLEM_CONTENT_TYPE, problem_body
from shoal._registration import bound_port, start_registration
from shoal._serve import freeze_startup_heap, listen_sockets, wait_drained
from shoal._settings import Settings

#: Reading from the client pauses while this many body bytes wait for the handler.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
#: Largest request head (request line and headers) accepted.
MAX_HEAD = 64 * 1024

#: Seconds between sweeps for idle keep-alive connections and stalled bodies (at most).
SWEEP_INTERVAL = 1.0
#: Bodies of a declared length up to this size must arrive whole within ``small_body_timeout``.
SMALL_BODY = 64 * 1024
#: The status counted for a request whose client left before it was answered (nginx's).
CLIENT_CLOSED_REQUEST = 499
#: Refused connections lingering at once (draining the client's request before the close,
#: so that it reads the 503 instead of a reset); past it, refusals close at once.
MAX_LINGERING = 256
#: Seconds a refused connection lingers at most.
LINGER = 2.0

_log = get_logger("shoal.serve")
_PROBLEM = PROBLEM_CONTENT_TYPE.encode()
_STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE = b"connection: keep-alive\r\n"
_CHUNKED = b"transfer-encoding: chunked\r\n"

Headers = list[tuple[bytes, bytes]]


class BodyTooLargeError(Exception):
    """The request body grew past the limit while streaming."""


class ClientGoneError(Exception):
    """The caller disconnected before its request body was complete."""


class BadBodyError(Exception):
    """The request body cannot be had whole: malformed (``status`` 400) or too slow (408).

    The connection stops reading; the handler answers ``status`` with ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class Request:
    """One request's head, its body (if it has one) and what the handler answered."""

    __slots__ = ("answered", "body", "client_ip", "headers", "http10", "keep_alive", "method",
                 "path", "query", "route", "status", "target")

    def __init__(  # noqa: PLR0917 - the parts of a request head
        self, method: str, target: bytes, headers: Headers, keep_alive: bool,
        client_ip: str | None, body: RequestBody | None, *, http10: bool = False,
    ) -> None:
        self.method = method
        self.http10 = http10
        self.target = target
        if target.startswith(b"/"):
            path, _, query = target.partition(b"?")
        else:  # absolute-form or "*": only the path counts, never the host it names
            try:
                # (``Any``: the stubs type ``path`` and ``query`` as bytes; they can be None)
                url: Any = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                path, query = b"", b""
            else:
                path, query = url.path or b"", url.query or b""
        #: The raw (undecoded) path, as text.
        self.path = path.decode("latin-1")
        self.query = query
        #: Header names lower-cased, values as sent, repeats kept.
        self.headers = headers
        self.keep_alive = keep_alive
        self.client_ip = client_ip
        self.body = body
        #: Set by the handler: the status it answered and the route label for metrics
        #: (:data:`CLIENT_CLOSED_REQUEST` when the client left before the answer).
        self.status = 500
        self.answered = False
        self.route: str | None = None


class RequestBody:
    """The request body as an async iterator of chunks, counted against ``limit``.

    The connection pauses reading while more than :data:`HIGH_WATER` bytes wait here, so an
    upload of any size holds a few chunks in memory. ``100 Continue`` is sent when the handler
    first asks for the body of a request that expects it."""

    __slots__ = ("_buffered", "_checked", "_chunks", "_conn", "_continue", "_error", "_seen",
                 "_seen_at", "_waited", "_waiter", "declared", "ended", "limit", "received",
                 "too_large")

    def __init__(self, conn: Connection, limit: int, expect_continue: bool,
                 declared: int | None = None) -> None:
        self._conn = conn
        #: The ``Content-Length`` the client declared; ``None`` for a chunked body.
        self.declared = declared
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._continue = expect_continue
        self.limit = limit
        self.ended = False
        self.received = 0
        self.too_large = False
        # The sweeps' view of the client's progress (no clock read per chunk): bytes seen at
        # the last sweep and since when, when the last sweep ran, and the seconds the body
        # has been the client's to send (not waiting for 100 Continue or a full buffer).
        self._seen = 0
        self._seen_at = 0.0
        self._checked = 0.0
        self._waited = 0.0

    # -- the connection's side ------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.ended:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def overdue(self, now: float, client_sends: bool, gap: float, total: float) -> str | None:
        """Why the body failed its timeouts at this sweep (``None``: it did not).

        ``client_sends``: the server reads the socket; time the server holds the body up
        (reading paused, ``100 Continue`` not sent yet) never counts against the client."""
        seen = self.received + self._buffered
        if self._checked == 0.0 or not client_sends or self._continue:
            self._checked = self._seen_at = now
            self._seen = seen
            return None
        self._waited += now - self._checked
        self._checked = now
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        elif now - self._seen_at > gap:
            return f"No body bytes arrived for {gap:g} s."
        declared = self.declared
        if declared is not None and declared <= SMALL_BODY and self._waited > total:
            return f"The body did not arrive whole within {total:g} s."
        return None

    # -- the handler's side ---------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """The whole body arrived and was consumed (the connection may be reused)."""
        return self.ended and not self._chunks

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._continue:
            self._continue = False
            self._conn.write_raw(_CONTINUE)
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.ended or self.too_large:
                raise StopAsyncIteration
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < LOW_WATER:
            self._conn.resume_reading()
        self.received += len(chunk)
        if self.received > self.limit:
            self.too_large = True
            raise BodyTooLargeError
        return chunk

    async def read_all(self) -> bytes | None:
        """The whole body; ``None`` when it exceeds ``limit`` or the caller left. Raises
        :class:`BadBodyError` for a malformed or timed-out body."""
        try:
            return b"".join([chunk async for chunk in self])
        except (BodyTooLargeError, ClientGoneError):
            return None


Handler = Callable[[Request, "Connection"], Awaitable[None]]


def default_max_connections() -> int:
    """Half the soft limit on open files: each client connection may hold an upstream one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(16, (soft - 64) // 2)


class ServerState:
    """What the connections of one server share: the handler, limits and the open connections."""

    def __init__(
        self, handler: Handler, *, max_body: int, keepalive: float = 5.0,
        max_connections: int | None = None, body_timeout: float = 10.0,
        small_body_timeout: float = 30.0,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.keepalive = keepalive
        self.max_connections = max_connections or default_max_connections()
        self.body_timeout = body_timeout
        self.small_body_timeout = small_body_timeout
        #: Seconds between sweeps: often enough that a timeout fires at most a little late.
        self.sweep_interval = min(SWEEP_INTERVAL, body_timeout / 4, small_body_timeout / 4)
        self.connections: set[Connection] = set()
        #: Connections refused for the cap (since the last sweep), and those lingering now.
        self.refused = 0
        self.lingering = 0
        self.loop = asyncio.get_running_loop()
        #: The ``Date`` header line of every answer, renewed by each sweep.
        self.date = b""
        self.renew_date()

    def renew_date(self) -> None:
        self.date = b"date: %s\r\n" % formatdate(usegmt=True).encode()

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.max_connections

    def protocol(self) -> asyncio.Protocol:
        """The protocol for a new connection: a :class:`Connection`, or a :class:`Refusal`
        at the cap (counted when made, not when connected: many may be accepted at once)."""
        if self.full:
            return Refusal(self)
        return Connection(self)

    def sweep(self) -> None:
        """Close keep-alive connections idle longer than ``keepalive`` (also a half-sent head)
        and fail bodies that stalled; log the refusals since the last sweep."""
        self.renew_date()
        now = self.loop.time()
        limit = now - self.keepalive
        for conn in list(self.connections):
            if conn.current is None:
                if conn.idle_since < limit:
                    conn.close()
            elif conn.parsing is not None:
                conn.check_body(now)
        if self.refused:
            _log.warning("server.connections_refused", refused=self.refused,
                         max_connections=self.max_connections)
            self.refused = 0

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if conn.current is None:
                conn.close()

    @property
    def busy(self) -> int:
        return sum(1 for conn in self.connections if conn.current is not None)


class Connection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip: str | None = None
        self.closed = False
        #: The request being handled, and pipelined ones waiting behind it.
        self.current: Request | None = None
        self._pipeline: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._parsing: RequestBody | None = None
        self._url = b""
        self._headers: Headers = []
        self._head_size = 0
        self._reading = True
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._chunked = False
        self.idle_since = self.loop.time()
        # (counted from now, not from connection_made: see ServerState.protocol)
        state.connections.add(self)

    @property
    def parsing(self) -> RequestBody | None:
        """The body still arriving, if any."""
        return self._parsing

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # (uvloop's is not a subclass)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0])

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (websockets) are not proxied: the request goes on as a plain one
            # (``Upgrade`` is hop-by-hop), then the connection closes.
            self._stop_reading_for_good()
        except httptools.HttpParserError as exc:
            # (httptools wraps what a callback raises: ours is the error's context)
            refusal = exc.__context__
            if isinstance(refusal, _Refused):
                self._bad_request(refusal.status, refusal.detail)
                return
            message = str(exc)
            if message == "Invalid HTTP version":
                self._bad_request(505, "Only HTTP/1.0 and HTTP/1.1 are served.")
            elif message in _UNKNOWN_CODING:
                self._bad_request(501, _CODING_DETAIL)
            else:
                self._bad_request(400, f"Malformed HTTP request: {message}.")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.parser = _DETACHED
        self.state.connections.discard(self)
        current = self.current
        if current is not None and not current.answered:
            current.status = CLIENT_CLOSED_REQUEST
        gone = ClientGoneError()
        if self._parsing is not None:
            self._parsing.fail(gone)
            self._parsing = None  # (it refers back to this connection)
        for request in (self.current, *self._pipeline):
            if request is not None and request.body is not None:
                request.body.fail(gone)
        self._pipeline.clear()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)  # the worker sees ``closed`` and ends

    def eof_received(self) -> bool | None:
        if self._parsing is not None or (self.current is None and not self._pipeline):
            return None  # nothing to answer, or a body that can never end: close
        # The client half-closed after sending: answer what it sent, then close.
        for request in (self.current, *self._pipeline):
            if request is not None:
                request.keep_alive = False
        return True

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise _Refused(431, _HEAD_DETAIL)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            raise _Refused(431, _HEAD_DETAIL)
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        headers = self._headers
        url = self._url
        self._url = b""  # (ready for the next head: no on_message_begin callback)
        self._headers = []
        self._head_size = 0
        body: RequestBody | None = None
        length: int | None = None
        chunked = False
        hosts = 0
        for name, value in headers:
            if name == b"content-length":
                length = int(value)  # (llhttp accepts only digits here)
            elif name == b"host":
                hosts += 1
            elif name == b"transfer-encoding":
                # (llhttp refuses a repeated or a ``chunked, x`` coding itself)
                if value.strip().lower() != b"chunked":
                    raise _Refused(501, _CODING_DETAIL)
                chunked = True
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":  # noqa: PLR1714 - (compiled: two compares)
            raise _Refused(505, "Only HTTP/1.0 and HTTP/1.1 are served.")
        if hosts != 1 and (hosts or version == "1.1"):
            raise _Refused(400, "An HTTP/1.1 request needs exactly one Host header."
                           if hosts == 0 else "More than one Host header.")
        if b"#" in url:
            raise _Refused(400, "A request target cannot have a fragment (#).")
        if chunked and version == "1.0":
            raise _Refused(400, "Transfer-Encoding is not allowed in HTTP/1.0.")
        if chunked or length:
            expect = any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers)
            body = RequestBody(self, self.state.max_body, expect, length)
        self._parsing = body
        request = Request(parser.get_method().decode("ascii"), url, headers,
                          parser.should_keep_alive(), self.client_ip, body,
                          http10=version == "1.0")
        if self.current is None:
            self._start(request)
        else:
            self._pipeline.append(request)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.feed(body)

    def on_message_complete(self) -> None:
        if self._parsing is not None:
            self._parsing.end()
            self._parsing = None

    # -- running requests -------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self.current = request
        idle = self._idle
        if idle is not None:
            self._idle = None
            idle.set_result(None)
        elif self._worker is None:
            self._worker = self.loop.create_task(self._work())
        # else: the worker is finishing the previous request and takes this one next

    async def _work(self) -> None:
        """The connection's requests, one after another, on one task (a task per request
        cost more than the rest of the server's own work)."""
        handler = self.state.handler
        try:
            while not self.closed:
                request = self.current
                if request is None:
                    idle = self._idle = self.loop.create_future()
                    await idle
                    continue
                try:
                    await handler(request, self)
                except Exception:  # noqa: BLE001 - the handler's own safety net failed
                    _log.exception("server.handler_failed", path=request.path)
                    self.cut()
                finally:
                    self._finished(request)
        finally:
            self._worker = None

    def _finished(self, request: Request) -> None:
        self.current = None
        if self.closed:
            return
        body = request.body
        if not request.keep_alive or (body is not None and not body.complete):
            # The rest of an unread body would be taken for the next request: close.
            self.close()
            return
        if self._pipeline:
            self._start(self._pipeline.popleft())
            self.resume_reading()  # (once no request waits behind it)
            return
        self.idle_since = self.loop.time()
        self.resume_reading()

    # -- writing the answer -------------------------------------------------------------------

    def _head(self, request: Request, status: int, headers: Headers, framing: bytes) -> bytes:
        if self.closed:  # nobody to answer
            request.status = CLIENT_CLOSED_REQUEST
        else:
            request.status = status
            request.answered = True
        body = request.body
        if body is not None and not body.complete:
            request.keep_alive = False  # (``_finished`` closes: say so)
        parts = [status_line(status), self.state.date]
        parts += [b"%s: %s\r\n" % item for item in headers]
        if framing:
            parts.append(framing)
        if not request.keep_alive:
            parts.append(_CLOSE)
        elif request.http10:
            parts.append(_KEEP_ALIVE)
        parts.append(b"\r\n")
        return b"".join(parts)

    def respond(self, request: Request, status: int, headers: Headers, body: bytes) -> None:
        """The whole answer in one write (``headers`` without ``content-length``)."""
        head = self._head(request, status, headers, b"content-length: %d\r\n" % len(body))
        self.write_raw(head if request.method == "HEAD" else head + body)

    def problem(self, request: Request, status: int, detail: str,
                headers: Headers | None = None) -> None:
        """Answer with an RFC 9457 problem (``trace_id`` and ``request_id`` included)."""
        out = [(b"content-type", _PROBLEM)]
        if headers:
            out.extend(headers)
        self.respond(request, status, out, problem_body(status, detail=detail,
                                                        instance=request.path))

    def start(self, request: Request, status: int, headers: Headers, *, sized: bool,
              first: bytes = b"") -> None:
        """Send the head of an answer (with ``first``, its beginning or, when ``headers``
        carry the length, all of it); ``sized``: ``headers`` carry its length.

        An unsized answer is chunked, or, to an HTTP/1.0 client, ends by closing."""
        self._chunked = False
        if not sized and request.method != "HEAD":
            if request.http10:
                request.keep_alive = False
            else:
                self._chunked = True
        head = self._head(request, status, headers, _CHUNKED if self._chunked else b"")
        if first and request.method != "HEAD":
            head += b"%x\r\n%s\r\n" % (len(first), first) if self._chunked else first
        self.write_raw(head)

    async def send(self, chunk: bytes) -> None:
        """A piece of a streamed answer; waits while the client reads slower than we write."""
        if not chunk:
            return
        self.write_raw(b"%x\r\n%s\r\n" % (len(chunk), chunk) if self._chunked else chunk)
        if self._write_paused and not self.closed:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None

    def end(self) -> None:
        """Finish a streamed answer."""
        if self._chunked:
            self.write_raw(b"0\r\n\r\n")
            self._chunked = False

    def write_raw(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def cut(self) -> None:
        """End an answer that cannot be completed: what was written is flushed, then the
        connection closes (the caller sees a short body)."""
        if self.current is not None:
            self.current.keep_alive = False
        self._chunked = False
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- flow control ---------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if self._reading and self.transport is not None:
            self._reading = False
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading and not self._pipeline and self.transport is not None \
                and not self.closed:
            self._reading = True
            self.transport.resume_reading()

    def _stop_reading_for_good(self) -> None:
        if self.current is not None:
            self.current.keep_alive = False
        for request in self._pipeline:
            request.keep_alive = False
        self.pause_reading()

    def check_body(self, now: float) -> None:
        """Fail the body still arriving when it stalled or is overdue (see :meth:`sweep`)."""
        body = self._parsing
        state = self.state
        if body is None:
            return
        why = body.overdue(now, self._reading, state.body_timeout, state.small_body_timeout)
        if why is not None:
            self._stop_reading_for_good()
            self._parsing = None
            body.fail(BadBodyError(408, why))

    def _bad_request(self, status: int, detail: str) -> None:
        self._stop_reading_for_good()
        if self._parsing is not None:  # a malformed body: the rest will never come
            self._parsing.fail(BadBodyError(400, f"Malformed request body: {detail}"))
            self._parsing = None
        if self.current is None:
            request = Request("GET", b"/", [], False, self.client_ip, None)
            self.problem(request, status, detail)
            self.close()
        # else: the connection closes once the request in hand is answered


#: What a closed connection parses with: the live parser holds bound methods of its
#: connection, a reference cycle only the cyclic GC would free (every closed connection).
_DETACHED = httptools.HttpRequestParser(None)


class Refusal(asyncio.Protocol):
    """A connection over ``max_connections``: answered 503 at once and closed.

    The close lingers (its write side first, then the rest once the client has sent what it
    had, at most :data:`LINGER` seconds): closing with the request unread would reset the
    connection, and the client could lose the answer."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tport = cast("asyncio.Transport", transport)
        state = self.state
        state.refused += 1
        body = problem_body(503, detail="The gateway is at its connection limit; retry later.")
        tport.write(b"".join([
            status_line(503), state.date, b"content-type: %s\r\n" % _PROBLEM,
            b"retry-after: 1\r\n", _CLOSE, b"content-length: %d\r\n\r\n" % len(body), body]))
        if state.lingering >= MAX_LINGERING or not tport.can_write_eof():
            tport.close()
            return
        state.lingering += 1
        tport.write_eof()
        self._timer = state.loop.call_later(LINGER, tport.close)

    def data_received(self, data: bytes) -> None:
        pass  # drained: the request is not served

    def eof_received(self) -> bool | None:
        return None  # the client is done: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.state.lingering -= 1


class _Refused(Exception):
    """A request head refused with ``status`` (raised in a parser callback)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


#: llhttp's errors for a transfer coding other than ``chunked`` (a list, or a repeat).
_UNKNOWN_CODING = frozenset({"Invalid `Transfer-Encoding` header value",
                             "Request has invalid `Transfer-Encoding`"})
_CODING_DETAIL = "Only the chunked transfer coding is accepted."
_HEAD_DETAIL = f"The request head exceeds {MAX_HEAD} bytes."


async def serve(handler: Handler, settings: Settings, *, max_body: int,
                on_stop: Callable[[], Awaitable[None]] | None = None,
                limits: dict[str, Any] | None = None) -> None:
    """Serve ``handler`` on the sockets :func:`~shoal._serve.listen_sockets` opens, until
    SIGTERM/SIGINT; then drain as every Shoal server does (``/readyz`` 503 at once, keep
    serving for ``SHOAL_DRAIN_DELAY``, then until nothing is in flight or
    ``SHOAL_DRAIN_GRACE`` is up), close, await ``on_stop`` and return. A second signal stops
    at once. ``limits``: :class:`ServerState`'s keyword arguments (connections, timeouts)."""
    loop = asyncio.get_running_loop()
    state = ServerState(handler, max_body=max_body, **(limits or {}))
    sockets = listen_sockets(settings)
    servers = []
    for sock in sockets:  # (not a comprehension: mypyc cannot compile an await in one)
        server = await loop.create_server(state.protocol, sock=sock, backlog=2048)
        servers.append(server)
    port = bound_port(sockets, settings.port)
    registrar = start_registration(settings, port=port)
    batch_writes(loop)
    freeze_startup_heap()
    _log.info("server.started", host=settings.host, port=port,
              ports=[bound_port([s], 0) for s in sockets])
    stop = asyncio.Event()
    drain: list[asyncio.Task[None]] = []

    async def drain_then_stop() -> None:
        await asyncio.to_thread(wait_drained, settings)
        stop.set()

    def on_signal() -> None:
        if drain:
            stop.set()  # a second signal: stop now
        else:
            drain.append(loop.create_task(drain_then_stop()))

    async def sweep() -> None:
        while True:
            await asyncio.sleep(state.sweep_interval)
            state.sweep()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    sweeper = loop.create_task(sweep())
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        sweeper.cancel()
        for server in servers:
            server.close()
        state.close_idle()
        busy = state.busy
        if busy:
            _log.warning("server.stopping_with_requests_in_flight", in_flight=busy)
        for conn in list(state.connections):
            conn.close()
        if on_stop is not None:
            await on_stop()
        if registrar is not None:
            await asyncio.to_thread(registrar.close)
        for task in drain:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        _log.info("server.stopped")
        batch_writes(None)
