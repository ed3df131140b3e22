"""The gateway's own HTTP/1.1 server (``_server``) over real loopback sockets.

Each test runs a :class:`ServerState` with a small handler on a free 127.0.0.1 port and talks
raw HTTP bytes to it with ``asyncio.open_connection``, so the test controls pipelining,
malformed input, half-sent bodies and disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from tests._gc import shoal_cyclic_garbage

from shoal.platform.gateway._server import (
    CLIENT_CLOSED_REQUEST,
    HIGH_WATER,
    MAX_HEAD,
    BadBodyError,
    BodyTooLargeError,
    ClientGoneError,
    Connection,
    Refusal,
    Request,
    ServerState,
)

Handler = Callable[[Request, Connection], Awaitable[None]]
TIMEOUT = 3.0


class RecordingTransport:
    """The connection's transport, recording every write the connection makes."""

    def __init__(self, transport: asyncio.Transport, written: list[bytes]) -> None:
        self._transport = transport
        self.written = written

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class SpyConnection(asyncio.Protocol):
    """Serves through a :class:`Connection` (``conn``) and records its writes (``written``).

    (A wrapper, not a subclass: the server module may be compiled, and compiled classes take
    no interpreted subclasses.)"""

    def __init__(self, state: ServerState) -> None:
        self.conn = Connection(state)
        self.written: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.conn.connection_made(
            RecordingTransport(transport, self.written))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


@dataclass
class Server:
    state: ServerState
    port: int
    made: list[SpyConnection] = field(default_factory=list)

    @property
    def spy(self) -> SpyConnection:
        assert len(self.made) == 1
        return self.made[0]

    @property
    def conn(self) -> Connection:
        return self.spy.conn


@contextlib.asynccontextmanager
async def serving(handler: Handler, *, max_body: int = 1 << 20, keepalive: float = 5.0,
                  **limits: Any) -> AsyncIterator[Server]:
    loop = asyncio.get_running_loop()
    state = ServerState(handler, max_body=max_body, keepalive=keepalive, **limits)
    made: list[SpyConnection] = []

    def factory() -> asyncio.Protocol:
        if state.full:  # (as ServerState.protocol does)
            return Refusal(state)
        conn = SpyConnection(state)
        made.append(conn)
        return conn

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        yield Server(state, server.sockets[0].getsockname()[1], made)
    finally:
        server.close()
        for spy in made:
            spy.conn.close()
        await server.wait_closed()
        workers = [s.conn._worker for s in made if s.conn._worker is not None]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=TIMEOUT)
            for task in pending:  # (a test that failed half-way)
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, values
        return values[0] if values else None


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: Server) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def head(self) -> Response:
        async with asyncio.timeout(TIMEOUT):
            raw = await self.reader.readuntil(b"\r\n\r\n")
        line, *lines = raw[:-4].split(b"\r\n")
        version, status, reason = line.split(b" ", 2)
        assert version == b"HTTP/1.1"
        headers = []
        for item in lines:
            name, _, value = item.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        return Response(int(status), reason, headers, b"")

    async def response(self) -> Response:
        """The next answer; its body by content-length, chunks or up to EOF."""
        resp = await self.head()
        async with asyncio.timeout(TIMEOUT):
            length = resp.header(b"content-length")
            if length is not None:
                resp.body = await self.reader.readexactly(int(length))
            elif resp.header(b"transfer-encoding") == b"chunked":
                parts = []
                while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
                    parts.append(await self.reader.readexactly(size))
                    assert await self.reader.readexactly(2) == b"\r\n"
                assert await self.reader.readexactly(2) == b"\r\n"
                resp.body = b"".join(parts)
            else:
                resp.body = await self.reader.read()
        return resp

    async def closed_by_server(self) -> bool:
        """Whether the server closed the connection (EOF, nothing more sent)."""
        async with asyncio.timeout(TIMEOUT):
            return await self.reader.read() == b""

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def client(server: Server) -> AsyncIterator[Client]:
    c = await Client.connect(server)
    try:
        yield c
    finally:
        await c.aclose()


async def eventually(predicate: Callable[[], bool]) -> bool:
    """Poll ``predicate`` until true; false when the deadline passes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until true (or fail after the deadline)."""
    assert await eventually(predicate)


async def echo_path(request: Request, conn: Connection) -> None:
    conn.respond(request, 200, [(b"content-type", b"text/plain")], request.path.encode())


def get(path: str = "/", *extra: bytes, version: bytes = b"1.1") -> bytes:
    return b"GET %s HTTP/%s\r\nhost: t\r\n%s\r\n" % (path.encode(), version, b"".join(extra))


# -- keep-alive and pipelining --------------------------------------------------------------------


async def test_keep_alive_answers_two_requests_on_one_connection() -> None:
    seen: list[Connection] = []

    async def handler(request: Request, conn: Connection) -> None:
        seen.append(conn)
        await echo_path(request, conn)

    async with serving(handler) as server, client(server) as c:
        c.send(get("/one"))
        first = await c.response()
        c.send(get("/second"))
        second = await c.response()

        assert (first.status, first.body) == (200, b"/one")
        assert (second.status, second.body) == (200, b"/second")
        for resp in (first, second):
            assert resp.header(b"content-length") == b"%d" % len(resp.body)
            date = resp.header(b"date")
            assert date is not None
            assert date.endswith(b" GMT")
            assert resp.header(b"connection") is None  # HTTP/1.1: persistent by default
        assert len(server.made) == 1
        assert seen == [server.conn, server.conn]
        assert server.state.connections == {server.conn}


async def test_pipelined_requests_are_answered_in_order() -> None:
    order: list[str] = []

    async def handler(request: Request, conn: Connection) -> None:
        order.append(request.path)
        if request.path == "/slow":
            # The next requests were parsed already and wait behind this one.
            assert [r.path for r in conn._pipeline] == ["/echo", "/fast"]
            assert conn._reading is False
            await asyncio.sleep(0.05)
        body = await request.body.read_all() if request.body is not None else b""
        conn.respond(request, 200, [], request.path.encode() + b":" + (body or b""))

    post = b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello"
    async with serving(handler) as server, client(server) as c:
        c.send(get("/slow") + post + get("/fast"))  # one write
        answers = [await c.response() for _ in range(3)]

        assert [a.body for a in answers] == [b"/slow:", b"/echo:hello", b"/fast:"]
        assert order == ["/slow", "/echo", "/fast"]
        assert server.conn._reading is True  # reading resumed once the pipeline drained
        c.send(get("/after"))
        assert (await c.response()).body == b"/after:"


async def test_pipelined_request_gets_a_body_sent_after_it_waited() -> None:
    slow_started = asyncio.Event()

    async def handler(request: Request, conn: Connection) -> None:
        if request.path == "/slow":
            assert [r.path for r in conn._pipeline] == ["/echo"]
            slow_started.set()
            await asyncio.sleep(0.02)
        body = await request.body.read_all() if request.body is not None else b""
        conn.respond(request, 200, [], request.path.encode() + b":" + (body or b""))

    async with serving(handler) as server, client(server) as c:
        c.send(get("/slow") + b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\n")
        async with asyncio.timeout(TIMEOUT):
            await slow_started.wait()  # reading is paused behind the pipelined request
        # The body arrives only if reading resumes when the pipelined request starts.
        c.send(b"hello" + get("/fast"))
        answers = [await c.response() for _ in range(3)]

        assert [a.body for a in answers] == [b"/slow:", b"/echo:hello", b"/fast:"]


# -- bad requests ---------------------------------------------------------------------------------


async def test_malformed_request_line_is_400_problem_and_closes() -> None:
    called: list[Request] = []

    async def handler(request: Request, conn: Connection) -> None:
        called.append(request)
        await echo_path(request, conn)

    async with serving(handler) as server, client(server) as c:
        c.send(b"GET / HTTP/1.1 trailing-junk\x01\r\nhost: t\r\n\r\n")
        resp = await c.response()

        assert resp.status == 400
        assert resp.header(b"content-type") == b"application/problem+json"
        assert resp.header(b"connection") == b"close"
        problem = json.loads(resp.body)
        assert problem["status"] == 400
        assert "Malformed" in problem["detail"]
        assert await c.closed_by_server()
        assert called == []


async def test_head_over_max_head_is_431_and_closes() -> None:
    called: list[Request] = []

    async def handler(request: Request, conn: Connection) -> None:
        called.append(request)
        await echo_path(request, conn)

    async with serving(handler) as server, client(server) as c:
        c.send(get("/", b"x-big: %s\r\n" % (b"a" * MAX_HEAD)))
        resp = await c.response()

        assert resp.status == 431
        assert resp.header(b"content-type") == b"application/problem+json"
        assert json.loads(resp.body)["status"] == 431
        assert await c.closed_by_server()
        assert called == []


async def test_head_just_under_max_head_is_served() -> None:
    async with serving(echo_path) as server, client(server) as c:
        c.send(get("/", b"x-big: %s\r\n" % (b"a" * (MAX_HEAD - 100))))
        assert (await c.response()).status == 200


# -- HTTP/1.0 -------------------------------------------------------------------------------------


async def test_http10_without_keep_alive_closes_after_the_answer() -> None:
    async with serving(echo_path) as server, client(server) as c:
        c.send(get("/old", version=b"1.0"))
        resp = await c.response()

        assert (resp.status, resp.body) == (200, b"/old")
        assert resp.header(b"connection") == b"close"
        assert await c.closed_by_server()


async def test_http10_with_keep_alive_stays_open() -> None:
    async with serving(echo_path) as server, client(server) as c:
        c.send(get("/a", b"connection: keep-alive\r\n", version=b"1.0"))
        first = await c.response()
        c.send(get("/b", b"connection: keep-alive\r\n", version=b"1.0"))
        second = await c.response()

        assert (first.body, second.body) == (b"/a", b"/b")
        assert first.header(b"connection") == b"keep-alive"
        assert second.header(b"connection") == b"keep-alive"
        assert len(server.made) == 1


# -- request bodies -------------------------------------------------------------------------------


async def test_chunked_request_body_arrives_as_chunks() -> None:
    received: list[bytes] = []
    first_chunk = asyncio.Event()

    async def handler(request: Request, conn: Connection) -> None:
        if request.body is None:
            await echo_path(request, conn)
            return
        async for chunk in request.body:
            received.append(chunk)
            first_chunk.set()
        assert request.body.complete
        conn.respond(request, 200, [], b"%d" % sum(map(len, received)))

    async with serving(handler) as server, client(server) as c:
        c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n")
        async with asyncio.timeout(TIMEOUT):
            await first_chunk.wait()  # the handler had the first chunk before the rest was sent
        c.send(b"7\r\n, world\r\n1\r\n!\r\n0\r\n\r\n")
        resp = await c.response()

        assert (resp.status, resp.body) == (200, b"13")
        assert b"".join(received) == b"hello, world!"
        assert received[0] == b"hello"
        c.send(get("/next"))  # the body was read whole: the connection is reused
        assert (await c.response()).status == 200


async def test_body_over_max_body_raises_and_the_connection_closes() -> None:
    errors: list[BaseException] = []

    async def handler(request: Request, conn: Connection) -> None:
        assert request.body is not None
        try:
            async for _ in request.body:
                pass
        except BodyTooLargeError as exc:
            errors.append(exc)
            assert request.body.too_large
            conn.problem(request, 413, "Too large.")
            return
        conn.respond(request, 200, [], b"read")

    async with serving(handler, max_body=10) as server, client(server) as c:
        # More than max_body, and the body is not finished (no last chunk yet).
        c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
               b"8\r\n12345678\r\n8\r\n12345678\r\n")
        resp = await c.response()

        assert resp.status == 413
        assert len(errors) == 1
        # The rest of the body would be taken for the next request: the server closes,
        # and says so in the answer.
        assert resp.header(b"connection") == b"close"
        assert await c.closed_by_server()


async def test_unread_body_closes_the_connection() -> None:
    async def handler(request: Request, conn: Connection) -> None:
        conn.respond(request, 404, [], b"no")  # never reads the body

    async with serving(handler) as server, client(server) as c:
        c.send(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n12345")
        resp = await c.response()

        assert resp.status == 404
        assert resp.header(b"connection") == b"close"
        assert await c.closed_by_server()


async def test_expect_100_continue_is_sent_when_the_handler_reads() -> None:
    started = asyncio.Event()
    go = asyncio.Event()
    reading: list[bool] = []

    async def handler(request: Request, conn: Connection) -> None:
        assert request.body is not None
        started.set()
        await go.wait()
        reading.append(True)
        body = await request.body.read_all()
        conn.respond(request, 200, [], b"got " + (body or b""))

    async with serving(handler) as server, client(server) as c:
        c.send(b"PUT /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        async with asyncio.timeout(TIMEOUT):
            await started.wait()
        assert server.spy.written == []  # no 100 Continue before the handler asks for the body
        go.set()
        interim = await c.head()
        assert interim.status == 100
        assert interim.headers == []
        assert reading == [True]
        c.send(b"data")  # a careful client sends the body only now
        resp = await c.response()

        assert (resp.status, resp.body) == (200, b"got data")
        assert server.spy.written[0] == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_expect_100_continue_is_not_sent_when_the_handler_answers_first() -> None:
    async def handler(request: Request, conn: Connection) -> None:
        conn.problem(request, 403, "No.")

    async with serving(handler) as server, client(server) as c:
        c.send(b"PUT /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n")
        resp = await c.response()

        assert resp.status == 403  # the final answer, no interim one before it
        assert b"100 Continue" not in b"".join(server.spy.written)
        assert await c.closed_by_server()  # the body was never read


# -- streamed answers -----------------------------------------------------------------------------


async def stream_handler(request: Request, conn: Connection) -> None:
    conn.start(request, 200, [(b"content-type", b"text/plain")], sized=False, first=b"hello")
    await conn.send(b", streamed")
    await conn.send(b"")  # nothing: no chunk (an empty one would end the answer)
    await conn.send(b" world" * 3)
    conn.end()


async def test_unsized_stream_to_http11_is_chunked() -> None:
    async with serving(stream_handler) as server, client(server) as c:
        c.send(get("/s"))
        resp = await c.head()
        assert resp.status == 200
        assert resp.header(b"transfer-encoding") == b"chunked"
        assert resp.header(b"content-length") is None
        assert resp.header(b"connection") is None
        tail = b"0\r\n\r\n"
        expected = b"5\r\nhello\r\na\r\n, streamed\r\n12\r\n" + b" world" * 3 + b"\r\n" + tail
        async with asyncio.timeout(TIMEOUT):
            assert await c.reader.readexactly(len(expected)) == expected

        c.send(get("/again"))  # the terminating chunk ended it: the connection is reused
        again = await c.response()
        assert again.body == b"hello, streamed" + b" world" * 3
        assert len(server.made) == 1


async def test_unsized_stream_to_http10_is_close_delimited() -> None:
    async with serving(stream_handler) as server, client(server) as c:
        c.send(get("/s", b"connection: keep-alive\r\n", version=b"1.0"))
        resp = await c.head()
        assert resp.status == 200
        assert resp.header(b"transfer-encoding") is None
        assert resp.header(b"content-length") is None
        assert resp.header(b"connection") == b"close"
        async with asyncio.timeout(TIMEOUT):
            body = await c.reader.read()  # up to EOF: the server closes to end the answer
        assert body == b"hello, streamed" + b" world" * 3


async def test_sized_stream_keeps_the_connection() -> None:
    async def handler(request: Request, conn: Connection) -> None:
        conn.start(request, 200, [(b"content-length", b"10")], sized=True, first=b"01234")
        await conn.send(b"56789")
        conn.end()

    async with serving(handler) as server, client(server) as c:
        for _ in range(2):
            c.send(get("/s"))
            resp = await c.response()
            assert resp.body == b"0123456789"
            assert resp.header(b"transfer-encoding") is None


# -- targets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "path", "query"), [
    (b"http://evil.example/x?y=1", "/x", b"y=1"),
    (b"http://evil.example:8080/a/b", "/a/b", b""),
    (b"/plain?q=%20", "/plain", b"q=%20"),
])
async def test_request_target_gives_path_and_query_never_the_host(
    target: bytes, path: str, query: bytes,
) -> None:
    seen: list[Request] = []

    async def handler(request: Request, conn: Connection) -> None:
        seen.append(request)
        conn.respond(request, 200, [], b"")

    async with serving(handler) as server, client(server) as c:
        c.send(b"GET %s HTTP/1.1\r\nhost: good.example\r\n\r\n" % target)
        assert (await c.response()).status == 200

    (request,) = seen
    assert request.path == path
    assert request.query == query
    assert request.target == target
    assert request.method == "GET"


# -- flow control ---------------------------------------------------------------------------------


async def test_large_upload_pauses_reading_until_the_handler_reads() -> None:
    total = HIGH_WATER * 8
    payload = bytes(range(256)) * (total // 256)
    paused = asyncio.Event()
    result: dict[str, object] = {}

    async def handler(request: Request, conn: Connection) -> None:
        body = request.body
        assert body is not None
        # Not reading yet: the connection stops reading once HIGH_WATER bytes wait.
        result["paused"] = await eventually(lambda: conn._reading is False)
        result["buffered_when_paused"] = body._buffered
        paused.set()
        data = b"".join([chunk async for chunk in body])
        result["intact"] = data == payload  # (no 2 MiB diff in a failure report)
        result["reading_after"] = conn._reading
        conn.respond(request, 200, [], b"%d" % len(data))

    async with serving(handler, max_body=total) as server, client(server) as c:
        c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n" % total)
        c.send(payload)
        drain = asyncio.ensure_future(c.writer.drain())  # the client keeps writing
        try:
            async with asyncio.timeout(TIMEOUT):
                await paused.wait()
            resp = await c.response()
        finally:
            await drain

    assert result["paused"] is True
    assert (resp.status, resp.body) == (200, b"%d" % total)
    assert result["intact"] is True
    buffered = result["buffered_when_paused"]
    assert isinstance(buffered, int)
    assert HIGH_WATER < buffered < total  # paused well before the whole upload was in memory
    assert result["reading_after"] is True


# -- idle connections -----------------------------------------------------------------------------


async def test_sweep_closes_idle_keep_alive_connections_older_than_keepalive() -> None:
    opened: list[float] = []

    async def handler(request: Request, conn: Connection) -> None:
        opened.append(conn.idle_since)  # (still the time the connection opened)
        await asyncio.sleep(0.02)  # a request that takes a while
        await echo_path(request, conn)

    async with serving(handler, keepalive=60.0) as server, client(server) as c:
        c.send(get("/a"))
        assert (await c.response()).status == 200
        conn = server.conn
        state = server.state
        assert conn.transport is not None
        # Idle time counts from the end of the last request, not from the connection's start.
        assert conn.idle_since - opened[0] >= 0.02

        state.sweep()  # idle, but not for 60 s yet
        assert not conn.transport.is_closing()

        # Open for longer than keepalive, but idle for less: kept.
        state.keepalive = state.loop.time() - (opened[0] + conn.idle_since) / 2
        state.sweep()
        assert not conn.transport.is_closing()

        server.state.keepalive = 0.0
        await wait_for(lambda: conn.idle_since < server.state.loop.time())
        server.state.sweep()
        assert await c.closed_by_server()
        await wait_for(lambda: not server.state.connections)


async def test_sweep_leaves_a_request_in_flight_alone() -> None:
    started = asyncio.Event()
    go = asyncio.Event()

    async def handler(request: Request, conn: Connection) -> None:
        started.set()
        await go.wait()
        await echo_path(request, conn)

    async with serving(handler, keepalive=0.0) as server, client(server) as c:
        c.send(get("/slow"))
        async with asyncio.timeout(TIMEOUT):
            await started.wait()
        conn = server.conn
        assert conn.transport is not None
        await wait_for(lambda: conn.idle_since < server.state.loop.time())
        server.state.sweep()
        assert not conn.transport.is_closing()
        assert server.state.busy == 1

        go.set()
        resp = await c.response()
        assert (resp.status, resp.body) == (200, b"/slow")

        # Now idle (and older than keepalive=0): the next sweep closes it.
        await wait_for(lambda: conn.idle_since < server.state.loop.time())
        server.state.sweep()
        assert await c.closed_by_server()


async def test_sweep_closes_a_half_sent_head() -> None:
    async with serving(echo_path, keepalive=0.0) as server, client(server) as c:
        c.send(b"GET / HTTP/1.1\r\nhost: t\r\n")  # no blank line yet
        await wait_for(lambda: len(server.made) == 1 and server.made[0].conn._url == b"/")
        conn = server.conn
        await wait_for(lambda: conn.idle_since < server.state.loop.time())
        server.state.sweep()
        assert await c.closed_by_server()


# -- the client leaving ---------------------------------------------------------------------------


async def test_client_disconnect_while_reading_the_body_raises_client_gone() -> None:
    first_chunk = asyncio.Event()
    outcome: list[BaseException] = []
    done = asyncio.Event()

    async def handler(request: Request, conn: Connection) -> None:
        assert request.body is not None
        try:
            async for _ in request.body:
                first_chunk.set()
        except ClientGoneError as exc:
            outcome.append(exc)
        finally:
            done.set()
        conn.respond(request, 200, [], b"too late")  # (harmless once the client left)

    async with serving(handler) as server:
        c = await Client.connect(server)
        c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n0123456789")
        async with asyncio.timeout(TIMEOUT):
            await first_chunk.wait()
        await c.aclose()
        async with asyncio.timeout(TIMEOUT):
            await done.wait()

        assert len(outcome) == 1
        assert isinstance(outcome[0], ClientGoneError)
        await wait_for(lambda: not server.state.connections)
        assert server.conn.closed


async def answer_body_errors(request: Request, conn: Connection) -> None:
    """Reads the body whole, answering a bad one as the gateway does."""
    assert request.body is not None
    try:
        body = await request.body.read_all()
    except BadBodyError as exc:
        conn.problem(request, exc.status, exc.detail)
        return
    conn.respond(request, 200, [], b"read %d" % len(body or b""))


async def test_malformed_chunked_body_fails_the_handlers_read_with_400() -> None:
    async with serving(answer_body_errors) as server, client(server) as c:
        c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\nzz-not-hex\r\n")
        resp = await c.response()

        assert resp.status == 400
        assert resp.header(b"content-type") == b"application/problem+json"
        assert "chunk size" in json.loads(resp.body)["detail"]
        assert resp.header(b"connection") == b"close"
        assert await c.closed_by_server()


# -- half-close and a failing handler -------------------------------------------------------------


async def test_half_closed_client_still_gets_its_answer() -> None:
    release = asyncio.Event()

    async def handler(request: Request, conn: Connection) -> None:
        await release.wait()
        await echo_path(request, conn)

    async with serving(handler) as server, client(server) as c:
        c.send(get("/asked"))
        await wait_for(lambda: bool(server.made) and server.conn.current is not None)
        c.writer.write_eof()  # the client is done sending, and waits for the answer
        # The server saw the EOF: the request in hand is the connection's last.
        await wait_for(lambda: server.conn.current is not None
                       and not server.conn.current.keep_alive)
        release.set()
        resp = await c.response()
        assert (resp.status, resp.body) == (200, b"/asked")
        assert resp.header(b"connection") == b"close"
        assert await c.closed_by_server()


async def test_a_handler_that_raises_cuts_the_connection_and_serves_the_next_one() -> None:
    async def handler(request: Request, conn: Connection) -> None:
        if request.path == "/boom":
            raise RuntimeError("handler bug")
        await echo_path(request, conn)

    async with serving(handler) as server:
        async with client(server) as c:
            c.send(get("/boom"))
            assert await c.closed_by_server()
        async with client(server) as c:  # the server itself carries on
            c.send(get("/fine"))
            resp = await c.response()
            assert (resp.status, resp.body) == (200, b"/fine")


async def test_closed_connections_leave_no_cyclic_garbage() -> None:
    # (the parser holds bound methods of its connection: a reference cycle per connection,
    # garbage that only the cyclic GC frees, unless the connection lets go of it on close)
    with shoal_cyclic_garbage() as leaked:
        async with serving(echo_path) as server:
            for path in ("/a", "/b", "/c"):
                async with client(server) as c:
                    c.send(get(path, b"connection: close\r\n"))
                    assert (await c.response()).body == path.encode()
                    assert await c.closed_by_server()
            state = server.state
            await wait_for(lambda: not state.connections)
            assert len(server.made) == 3
        del server, c  # (the spies it keeps hold the connections)
    assert leaked == []


async def test_a_request_whose_client_left_before_the_answer_counts_as_499() -> None:
    seen: list[Request] = []
    release = asyncio.Event()

    async def handler(request: Request, conn: Connection) -> None:
        seen.append(request)
        await release.wait()
        await echo_path(request, conn)  # (to nobody)

    async with serving(handler) as server:
        c = await Client.connect(server)
        c.send(b"POST /left HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n01234")
        await wait_for(lambda: bool(seen))
        await c.aclose()
        await wait_for(lambda: not server.state.connections)
        release.set()
        await wait_for(lambda: server.conn._worker is None)

    assert seen[0].status == CLIENT_CLOSED_REQUEST
    assert not seen[0].answered


# -- slow bodies ----------------------------------------------------------------------------------


async def test_a_body_that_stalls_fails_with_408_after_body_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with serving(answer_body_errors, body_timeout=0.4) as server, client(server) as c:
        sweeper = loop.create_task(sweep_every(server.state))
        try:
            started = loop.time()
            c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nx")
            resp = await c.response()
            took = loop.time() - started
        finally:
            sweeper.cancel()

        assert resp.status == 408
        assert "No body bytes arrived for 0.4 s" in json.loads(resp.body)["detail"]
        assert resp.header(b"connection") == b"close"
        assert await c.closed_by_server()
        assert 0.4 <= took < 0.4 + 3 * server.state.sweep_interval + 0.5


async def test_a_small_body_trickling_in_fails_with_408_at_small_body_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with serving(answer_body_errors, body_timeout=5.0, small_body_timeout=0.6) as server, \
            client(server) as c:
        sweeper = loop.create_task(sweep_every(server.state))
        started = loop.time()
        c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n")
        answer = asyncio.ensure_future(c.response())
        try:
            while not answer.done():  # a byte every 50 ms: never a gap of body_timeout
                c.send(b"x")
                await asyncio.wait([answer], timeout=0.05)
            resp = answer.result()
        finally:
            sweeper.cancel()
        took = loop.time() - started

    assert resp.status == 408
    assert "did not arrive whole within 0.6 s" in json.loads(resp.body)["detail"]
    assert took < 5.0


async def test_time_the_server_holds_a_body_up_is_not_counted_against_the_client() -> None:
    loop = asyncio.get_running_loop()

    async def slow_to_read(request: Request, conn: Connection) -> None:
        await asyncio.sleep(0.5)  # longer than both timeouts, before asking for the body
        await answer_body_errors(request, conn)

    async with serving(slow_to_read, body_timeout=0.2, small_body_timeout=0.3) as server, \
            client(server) as c:
        sweeper = loop.create_task(sweep_every(server.state))
        try:
            c.send(b"PUT /x HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\n"
                   b"content-length: 4\r\n\r\n")
            assert (await c.head()).status == 100  # sent once the handler reads
            c.send(b"data")
            resp = await c.response()
        finally:
            sweeper.cancel()

        assert (resp.status, resp.body) == (200, b"read 4")


async def sweep_every(state: ServerState) -> None:
    """What ``serve`` runs: a sweep each ``sweep_interval``."""
    while True:
        await asyncio.sleep(state.sweep_interval)
        state.sweep()


# -- the connection cap ---------------------------------------------------------------------------


async def test_beyond_max_connections_new_ones_get_503_while_open_ones_keep_working() -> None:
    async with serving(echo_path, max_connections=2) as server:
        async with client(server) as first, client(server) as second:
            await wait_for(lambda: len(server.state.connections) == 2)
            first.send(get("/a"))
            assert (await first.response()).body == b"/a"
            async with client(server) as third:
                third.send(get("/refused"))  # (sent before the answer: a lingering close)
                refused = await third.response()
                assert refused.status == 503
                assert refused.header(b"content-type") == b"application/problem+json"
                assert refused.header(b"retry-after") == b"1"
                assert refused.header(b"connection") == b"close"
                assert await third.closed_by_server()
            # The connections already open are served as before.
            first.send(get("/b"))
            second.send(get("/c"))
            assert (await first.response()).body == b"/b"
            assert (await second.response()).body == b"/c"
            assert server.state.refused == 1
        await wait_for(lambda: not server.state.connections and not server.state.lingering)
        async with client(server) as again:  # room again
            again.send(get("/d"))
            assert (await again.response()).body == b"/d"


# -- RFC 9112 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.0\r\nhost: a\r\nhost: a\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nhost: a\r\n\r\n", 505),
    (b"GET / HTTP/0.9\r\nhost: a\r\n\r\n", 505),
    (b"GET / HTTP/1.2\r\nhost: a\r\n\r\n", 505),
    (b"GET /a#frag HTTP/1.1\r\nhost: a\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, identity\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n"
     b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
     400),
])
async def test_heads_rfc_9112_refuses_are_answered_and_never_reach_the_handler(
    head: bytes, status: int,
) -> None:
    called: list[Request] = []

    async def handler(request: Request, conn: Connection) -> None:
        called.append(request)
        await echo_path(request, conn)

    async with serving(handler) as server, client(server) as c:
        c.send(head)
        resp = await c.response()

        assert resp.status == status
        assert resp.header(b"content-type") == b"application/problem+json"
        assert json.loads(resp.body)["status"] == status
        assert await c.closed_by_server()
        assert called == []


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.0\r\n\r\n",  # (HTTP/1.0 needs no Host)
    b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: Chunked\r\n\r\n0\r\n\r\n",
])
async def test_heads_rfc_9112_allows_are_served(head: bytes) -> None:
    async with serving(echo_path) as server, client(server) as c:
        c.send(head)
        assert (await c.response()).status == 200
