"""One HTTP/1.1 keep-alive connection on a raw asyncio protocol, parsed by httptools (llhttp).

The connection runs one exchange at a time: :meth:`H1Connection.send` writes the request
(head and a small body in one ``write``; a streamed body chunked, from a writer task that
waits for the socket to drain), the caller waits (:meth:`H1Connection.wait`) until
``head_done``, and the :class:`Exchange` iterates the body as it arrives. Memory stays
bounded both ways: reading pauses while more than ``HIGH_WATER`` bytes wait for the
consumer, writing waits while the socket's buffer is full.

Time is kept by the transport's one timer for all exchanges in flight (no
``asyncio.wait_for`` task per read, no timer per exchange): :meth:`H1Connection.timer_due`
says when an exchange times out, at its deadline or after ``read`` seconds without a byte
while someone waits.
Errors stay raw here (``OSError``, ``TimeoutError``, ``httptools.HttpParserError``, a request
body's own exception); the transport translates them.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, cast

import httptools

if TYPE_CHECKING:
    from shoal.client._h1transport import Pool

#: Reading pauses while this many response bytes wait for the consumer.
HIGH_WATER = 256 * 1024
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})
_INF = math.inf
#: What a lost connection parses with: the live parser holds bound methods of its
#: connection, a reference cycle only the cyclic GC would free (every closed connection).
_DETACHED = httptools.HttpResponseParser(None)


class ConnectionBroke(Exception):
    """The connection closed or sent something unparseable before the exchange completed."""


class Exchange:
    """The response side of one exchange, and its body as an async iterator of chunks."""

    __slots__ = ("_conn", "chunks", "complete", "error", "status")

    def __init__(self, conn: H1Connection) -> None:
        self._conn: H1Connection | None = conn
        self.status = 0
        self.chunks: deque[bytes] = deque()
        self.complete = False
        self.error: BaseException | None = None

    def __aiter__(self) -> Exchange:
        return self

    async def __anext__(self) -> bytes:
        while True:
            chunks = self.chunks
            if chunks:
                chunk = chunks.popleft()
                conn = self._conn
                if conn is not None:
                    conn.consumed(len(chunk))
                return chunk
            if self.error is not None:
                raise self.error
            if self.complete or self._conn is None:
                raise StopAsyncIteration
            await self._conn.wait()

    def detach(self) -> H1Connection | None:
        conn, self._conn = self._conn, None
        return conn


class H1Connection(asyncio.Protocol):
    """A client connection to one instance (see the module docstring)."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop, read_timeout: float | None,
                 ) -> None:
        self.pool = pool
        self._loop = loop
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.exchange: Exchange | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.lost = False
        #: Counted in its pool (set once connected; cleared when the connection closes).
        self.counted = False
        self.received_any = False
        self.idle_since = 0.0
        self._buffered = 0
        self._reading_paused = False
        self._writing_paused = False
        self.head_done = False
        self._interim = False
        self._keep_alive = False
        self._framed = False  # the response has a Content-Length or is chunked
        self._head_request = False
        self._deadline = _INF
        self._activity = 0.0

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not ``asyncio.Transport`` subclasses, but behave as one.)
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._activity = self._loop.time()
        if self.exchange is None:  # bytes nobody asked for: the connection is unusable
            self._abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroke(f"invalid response: {exc}"))
            self._abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._parser = _DETACHED
        self.pool.forget(self)
        exchange = self.exchange
        if exchange is not None and not exchange.complete:
            if self.head_done and not self._framed and exc is None:
                # A body delimited by the connection's close: this is its end.
                exchange.complete = True
                self._keep_alive = False
            else:
                self._fail(ConnectionBroke(f"connection closed: {exc or 'EOF'}"))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        if len(name) in (14, 17):
            lower = name.lower()
            if lower in (b"content-length", b"transfer-encoding"):
                self._framed = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the real answer follows
            self._interim = True
            self.raw_headers = []
            self._framed = False
            return
        exchange = self.exchange
        assert exchange is not None
        exchange.status = status
        self.head_done = True
        if self._head_request:  # no body follows, whatever the headers say
            exchange.complete = True
            self._keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.complete:
            return
        exchange.chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused and self._transport:
            self._reading_paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        exchange = self.exchange
        if exchange is not None and not exchange.complete:
            exchange.complete = True
            self._keep_alive = self._parser.should_keep_alive()
            self._wake()

    # -- one exchange -----------------------------------------------------------------------

    def send(self, method: str, head: bytes, body: bytes | None,
             stream: AsyncIterable[bytes] | None, timeout: float | None) -> Exchange:
        """Write the request and start timing; the response is read through the result."""
        transport = self._transport
        assert transport is not None
        exchange = self.exchange = Exchange(self)
        self.raw_headers = []
        self.received_any = False
        self.head_done = self._framed = self._interim = False
        self._head_request = method == "HEAD"
        self._buffered = 0
        now = self._loop.time()
        self._activity = now
        self._deadline = _INF if timeout is None else now + timeout
        self.pool.owner.watch(self, self.timer_due(now))
        if body is not None and len(body) <= 65536:
            transport.write(head + body)
        else:
            transport.write(head)
            if body is not None:
                transport.write(body)
        if stream is not None:
            self._writer = self._loop.create_task(self._send_stream(stream))
        return exchange

    async def _send_stream(self, stream: AsyncIterable[bytes]) -> None:
        transport = self._transport
        assert transport is not None
        try:
            async for chunk in stream:
                if not chunk:
                    continue
                if self.lost:
                    return
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                while self._writing_paused and not self.lost:
                    self._drain = self._loop.create_future()
                    await self._drain
            if not self.lost:
                transport.write(b"0\r\n\r\n")
        except Exception as exc:  # noqa: BLE001 - the body's own error ends the exchange
            self._fail(exc)
            self._abort()

    def writer_done(self) -> bool:
        return self._writer is None or self._writer.done()

    async def wait(self) -> None:
        """Wait for the next event on the exchange (bytes, completion, error or timeout)."""
        self._activity = self._loop.time()
        if self._reading_paused:
            self._resume_reading()
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def consumed(self, size: int) -> None:
        self._buffered -= size
        if self._reading_paused and self._buffered <= HIGH_WATER // 4:
            self._resume_reading()

    def finish(self) -> bool:
        """End the exchange; ``True`` when the connection may serve another one."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.detach()
        self.pool.owner.unwatch(self)
        writer, self._writer = self._writer, None
        reusable = (
            exchange is not None and exchange.complete and exchange.error is None
            and self._keep_alive and not self.lost
            and (writer is None or writer.done())
        )
        if writer is not None and not writer.done():
            writer.cancel()
        if reusable:
            if self._reading_paused:
                self._resume_reading()
            self.idle_since = self._loop.time()
        else:
            self.close()
        return reusable

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- internals --------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self._transport is not None and not self.lost:
            self._transport.resume_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.error is None and not exchange.complete:
            exchange.error = error
        self._wake()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def timer_due(self, now: float) -> float:
        """When this exchange times out (the deadline, or the read timeout counted from the
        last bytes while someone waits): ``now`` if it has, ``_INF`` without a bound or once
        the exchange is over. The transport's one timer calls :meth:`time_out` then."""
        exchange = self.exchange
        if exchange is None or exchange.complete or exchange.error is not None:
            return _INF
        read = self._read_timeout
        if now >= self._deadline or (
            read is not None and self._waiter is not None and now >= self._activity + read
        ):
            return now
        due = self._deadline
        if read is not None:
            due = min(due, (self._activity if self._waiter is not None else now) + read)
        return due

    def time_out(self) -> None:
        self._fail(TimeoutError())
        self._abort()


def request_head(method: str, target: str, host: str, headers: dict[str, str],
                 body: bytes | None, *, streamed: bool) -> bytes:
    """The request line and headers, framing (``Content-Length`` or chunked) set here.

    The caller's ``Host`` wins over the instance's; its framing headers are replaced.
    Raises ``ValueError`` for a CR or LF in a header (no header injection).
    """
    block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    probe = "\n" + block.lower()
    if "\nhost:" in probe or "\ncontent-length:" in probe or "\ntransfer-encoding:" in probe:
        block, lines = _rebuild(headers, host)  # rare: the caller set Host or framing
    else:
        block += f"host: {host}\r\n"
        lines = len(headers) + 1
    if streamed:
        framing = "transfer-encoding: chunked\r\n"
    elif body is not None:
        framing = f"content-length: {len(body)}\r\n"
    elif method not in _NO_BODY_METHODS:
        framing = "content-length: 0\r\n"
    else:
        framing = ""
    head = f"{method} {target} HTTP/1.1\r\n{block}{framing}\r\n"
    # Every line ends with the one CRLF put there above: any other CR or LF came from a
    # header name or value (or the target), and would split the request.
    expected = lines + (3 if framing else 2)
    if head.count("\n") != expected or head.count("\r") != expected:
        raise ValueError("a header name or value contains CR or LF")
    try:
        return head.encode("latin-1")
    except UnicodeEncodeError:
        return head.encode()


def _rebuild(headers: dict[str, str], host: str) -> tuple[str, int]:
    lines = []
    host_line = f"host: {host}\r\n"
    for name, value in headers.items():
        lower = name.lower()
        if lower == "host":
            host_line = f"{name}: {value}\r\n"
        elif lower not in ("content-length", "transfer-encoding"):
            lines.append(f"{name}: {value}\r\n")
    lines.append(host_line)
    return "".join(lines), len(lines)
