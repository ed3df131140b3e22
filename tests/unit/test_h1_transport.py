"""``H1Transport``: the raw-asyncio HTTP/1.1 transport against real loopback servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from tests._gc import shoal_cyclic_garbage

from shoal._errors import (
    RequestBodyError,
    UpstreamConnectError,
    UpstreamResetError,
    UpstreamTimeoutError,
    UpstreamTransportError,
)
from shoal.client import (
    AsyncClient,
    BreakerPolicy,
    BreakerState,
    OutlierPolicy,
    Request,
    RetryPolicy,
    StreamingResponse,
    Timeouts,
)
from shoal.client._h1conn import HIGH_WATER
from shoal.client._h1transport import H1Transport
from shoal.discovery import StaticResolver

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\n\r\nok"


class Server:
    """A loopback server running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self._server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


def request(url: str, method: str = "GET", *, body: bytes | None = None,
            timeout: float | None = 5.0, headers: dict[str, str] | None = None) -> Request:
    return Request(method, url + "/p?q=1", headers=headers or {"x-h": "v"}, body=body,
                   timeout=timeout, service="svc", instance=url)


def keep_alive(server_box: list[Server], reply: bytes = OK) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await server_box[0].read_request(reader)
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            writer.write(reply)
            await writer.drain()
    return handler


@pytest.fixture
def transport() -> H1Transport:
    return H1Transport(timeouts=Timeouts(connect=1.0, read=2.0, total=5.0))


async def test_keeps_the_connection_alive_across_requests(transport: H1Transport) -> None:
    box: list[Server] = []
    async with Server(keep_alive(box)) as server:
        box.append(server)
        for _ in range(3):
            response = await transport.handle_async_request(request(server.url))
            assert response.status == 200
            assert response.content == b"ok"
        assert server.connections == 1
        assert response.headers["X-A"] == "1"  # case-insensitive
        first = server.requests[0]
        assert first.startswith(b"GET /p?q=1 HTTP/1.1\r\n")
        assert b"x-h: v\r\n" in first
        assert f"host: {server.url.removeprefix('http://')}".encode() in first
        await transport.aclose()


async def test_streams_a_chunked_response_and_keeps_repeated_headers(
    transport: H1Transport,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                     b"set-cookie: a=1\r\nset-cookie: b=2\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with Server(handler) as server:
        response = await transport.handle_async_stream(request(server.url))
        assert [v for k, v in response.raw_headers if k == b"set-cookie"] == [b"a=1", b"b=2"]
        assert b"".join([chunk async for chunk in response]) == b"abcde"
        await response.aclose()
        await transport.aclose()


async def test_a_connection_dropped_mid_body_raises_a_reset_error(
    transport: H1Transport,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()

    async with Server(handler) as server:
        response = await transport.handle_async_stream(request(server.url))
        with pytest.raises(UpstreamResetError) as info:
            async for _ in response:
                pass
        assert info.value.__cause__ is not None
        assert info.value.service == "svc"
        await response.aclose()
        assert transport.open_connections == 0


async def test_a_connection_closed_before_the_head_raises_a_reset_error(
    transport: H1Transport,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with Server(handler) as server:
        with pytest.raises(UpstreamResetError):
            await transport.handle_async_request(request(server.url, "POST", body=b"x"))


async def test_a_refused_connection_is_a_connect_error(transport: H1Transport) -> None:
    async with Server(keep_alive([])) as server:
        url = server.url
    with pytest.raises(UpstreamConnectError) as info:
        await transport.handle_async_request(request(url))
    assert not isinstance(info.value, UpstreamResetError)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.instance == url


async def test_a_silent_upstream_times_out(transport: H1Transport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with Server(handler) as server:
        with pytest.raises(UpstreamTimeoutError) as info:
            await transport.handle_async_request(request(server.url, timeout=0.2))
        assert isinstance(info.value.__cause__, TimeoutError)


async def test_the_pool_limit_makes_calls_wait_for_a_free_connection() -> None:
    transport = H1Transport(max_connections=1)
    box: list[Server] = []
    async with Server(keep_alive(box)) as server:
        box.append(server)
        first = await transport.handle_async_stream(request(server.url))
        second = asyncio.ensure_future(transport.handle_async_request(request(server.url)))
        await asyncio.sleep(0.05)
        assert not second.done()  # no free connection yet
        assert await first.aread() == b"ok"
        await first.aclose()
        assert (await second).content == b"ok"
        assert server.connections == 1
        assert transport.open_connections == 1
        await transport.aclose()


async def test_a_wait_for_a_connection_is_bounded_by_the_timeout() -> None:
    transport = H1Transport(max_connections=1)
    box: list[Server] = []
    async with Server(keep_alive(box)) as server:
        box.append(server)
        first = await transport.handle_async_stream(request(server.url))
        with pytest.raises(UpstreamTimeoutError):
            await transport.handle_async_request(request(server.url, timeout=0.1))
        await first.aclose()


async def test_a_kept_alive_connection_the_server_closed_is_replaced(
    transport: H1Transport,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)  # keep-alive by HTTP/1.1 default, then closes anyway
        await writer.drain()

    async with Server(handler) as server:
        assert (await transport.handle_async_request(request(server.url))).status == 200
        await asyncio.sleep(0.05)
        assert (await transport.handle_async_request(request(server.url))).status == 200
        assert server.connections == 2


async def one_answer_per_connection(reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
    """Answers a connection's first request; drops its next one (closes the connection), as
    a server that died or closed its idle connections would."""
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    writer.write(OK)
    await writer.drain()
    await reader.readuntil(b"\r\n\r\n")


async def three_idle_connections(transport: H1Transport, server: Server) -> None:
    """Three connections to ``server``, each answered once, all idle in the pool now."""
    first = [transport.handle_async_request(request(server.url)) for _ in range(3)]
    assert [r.status for r in await asyncio.gather(*first)] == [200, 200, 200]
    assert server.connections == 3
    assert transport.open_connections == 3


async def test_a_resend_after_a_stale_connection_goes_on_a_new_one(
    transport: H1Transport,
) -> None:
    # A server that died (or closed its idle connections) leaves every pooled connection to
    # it dead, and the client may learn it only by sending: the resend must not take another
    # idle connection (it would be as dead, and then the call failed with no answer).
    async with Server(one_answer_per_connection) as server:
        await three_idle_connections(transport, server)
        response = await transport.handle_async_request(request(server.url))
        assert (response.status, response.content) == (200, b"ok")
        assert server.connections == 4  # one stale connection tried, then a new one
        assert transport.open_connections == 1
        await transport.aclose()


async def test_a_stale_connection_under_a_post_retires_the_other_idle_ones(
    transport: H1Transport,
) -> None:
    # A POST is not resent (the server may have acted on it), but the call that found a
    # stale connection drops the instance's other idle ones, so the next call does not meet
    # them one after another.
    async with Server(one_answer_per_connection) as server:
        await three_idle_connections(transport, server)
        with pytest.raises(UpstreamResetError):
            await transport.handle_async_request(request(server.url, "POST", body=b"x"))
        assert transport.open_connections == 0  # the two other idle ones were retired
        response = await transport.handle_async_request(request(server.url, "POST", body=b"y"))
        assert (response.status, response.content) == (200, b"ok")
        assert server.connections == 4
        await transport.aclose()


async def test_streams_a_request_body_chunked_with_bounded_buffers() -> None:
    transport = H1Transport()
    received: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
            total += size
        received.append(total)
        writer.write(OK)
        await writer.drain()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"x" * 65536

    async with Server(handler) as server:
        req = request(server.url, "POST")
        req.stream = body()
        response = await transport.handle_async_request(req)
        assert response.status == 200
        assert received == [64 * 65536]
        await transport.aclose()


async def test_reading_pauses_while_the_consumer_lags() -> None:
    transport = H1Transport()
    size = 8 * HIGH_WATER

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        writer.write(b"y" * size)
        await writer.drain()
        await reader.read()

    async with Server(handler) as server:
        response = await transport.handle_async_stream(request(server.url))
        await asyncio.sleep(0.2)  # nobody reads: the transport stops reading
        chunks: list[bytes] = list(response._exchange.chunks)  # type: ignore[attr-defined]
        buffered = sum(len(c) for c in chunks)
        assert buffered <= 2 * HIGH_WATER
        assert len(await response.aread()) == size
        await response.aclose()
        await transport.aclose()


class Gone(Exception):
    """What a caller's streamed body raises when the caller goes away."""


async def failing_body() -> AsyncIterator[bytes]:
    yield b"a"
    raise Gone


async def read_to_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def test_a_failing_request_body_is_a_request_body_error_caused_by_it_not_a_reset() -> None:
    transport = H1Transport()
    async with Server(read_to_eof) as server:
        req = request(server.url, "POST")
        req.stream = failing_body()
        with pytest.raises(RequestBodyError) as info:
            await transport.handle_async_stream(req)
        assert isinstance(info.value.__cause__, Gone)
        assert not isinstance(info.value, UpstreamTransportError)  # (not the service's fault)


async def test_request_bodies_that_fail_count_neither_for_the_breaker_nor_for_ejection() -> None:
    # The caller leaving (its streamed body raising) is not the upstream failing: were each
    # counted as a failure, five would open the breaker and eject the instance.
    async with Server(read_to_eof) as server:
        client = AsyncClient(
            service="t", transport=H1Transport(),
            resolver=StaticResolver({"users": [server.url]}),
            breaker=BreakerPolicy(minimum_calls=5, window_size=10),
            outlier=OutlierPolicy(consecutive_failures=2),
        )
        for _ in range(20):
            with pytest.raises(RequestBodyError) as info:
                await client.stream("POST", "http://users/x", body=failing_body())
            assert isinstance(info.value.__cause__, Gone)
        upstream = client.upstream("users")
        assert upstream.breaker.state is BreakerState.CLOSED
        assert upstream.table.ejected_count(time.monotonic()) == 0
        assert upstream.breaker.try_acquire() is not None
        await client.aclose()


async def test_header_injection_is_refused(transport: H1Transport) -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        await transport.handle_async_request(
            request("http://127.0.0.1:9", headers={"x": "a\r\nevil: 1"})
        )


async def test_the_client_policies_run_over_it() -> None:
    box: list[Server] = []
    calls = 0

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        await reader.readuntil(b"\r\n\r\n")
        calls += 1
        if calls == 1:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
        else:
            writer.write(OK)
        await writer.drain()
        await keep_alive(box)(reader, writer)

    async with Server(flaky) as server:
        box.append(server)
        client = AsyncClient(
            service="t", transport=H1Transport(),
            resolver=StaticResolver({"users": [server.url]}),
            retry=RetryPolicy(backoff_initial=0.001, backoff_max=0.001),
        )
        response = await client.stream("GET", "http://users/x")
        assert response.status == 200
        assert response.attempts == 2
        assert await response.aread() == b"ok"
        await response.aclose()
        await client.aclose()


async def test_the_callers_host_and_framing_headers_are_handled(transport: H1Transport) -> None:
    box: list[Server] = []
    async with Server(keep_alive(box)) as server:
        box.append(server)
        response = await transport.handle_async_request(request(
            server.url, "PUT", body=b"abc",
            headers={"Host": "users.internal", "Content-Length": "999", "x-k": "v"},
        ))
        assert response.status == 200
        head = server.requests[0].lower()
        assert head.count(b"host:") == 1
        assert b"host: users.internal\r\n" in head
        assert b"content-length: 3\r\n" in head
        assert b"999" not in head
        await transport.aclose()


async def test_an_interim_100_continue_is_skipped(transport: H1Transport) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        await writer.drain()
        await reader.read()

    async with Server(handler) as server:
        response = await transport.handle_async_request(request(server.url))
        assert (response.status, response.content) == (200, b"ok")
        await transport.aclose()


async def test_one_timer_serves_exchanges_with_different_timeouts(
        transport: H1Transport) -> None:
    """A later exchange with a shorter timeout times out on its own time, not on the earlier
    exchange's; the earlier one is untouched and still answered."""
    release = asyncio.Event()
    long_arrived = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"x-h: long" in head:
            long_arrived.set()
            await release.wait()
            writer.write(OK)
            await writer.drain()
        await reader.read()  # the short one: never answered

    async with Server(handler) as server:
        loop = asyncio.get_running_loop()
        long_call = asyncio.create_task(transport.handle_async_request(
            request(server.url, timeout=4.0, headers={"x-h": "long"})))
        async with asyncio.timeout(5):
            await long_arrived.wait()  # the long exchange (and its timer) is in flight first
        started = loop.time()
        with pytest.raises(UpstreamTimeoutError):
            await transport.handle_async_request(request(server.url, timeout=0.2))
        assert loop.time() - started < 1.0  # its own 0.2 s, not the long call's 4 s
        assert not long_call.done()
        release.set()
        response = await long_call
        assert (response.status, response.content) == (200, b"ok")


async def test_responses_and_closed_connections_leave_no_cyclic_garbage() -> None:
    # (a streamed response once referred to itself, and a connection's parser holds bound
    # methods of the connection: both garbage that only the cyclic GC frees)
    async def close_after_reply(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()

    box: list[Server] = []
    transport = H1Transport(timeouts=Timeouts(connect=1.0, read=2.0, total=5.0))
    with shoal_cyclic_garbage() as leaked:
        async with Server(keep_alive(box)) as kept, Server(close_after_reply) as closing:
            box.append(kept)
            for server in (kept, closing):
                for _ in range(3):
                    response = await transport.handle_async_stream(request(server.url))
                    assert await response.aread() == b"ok"
                    await response.aclose()
            assert (kept.connections, closing.connections) == (1, 3)
        del response
    await transport.aclose()
    assert leaked == []


async def steps_until(done: Callable[[], bool], limit: int = 1000) -> None:
    """Run the event loop one step at a time (no timed sleep) until ``done()``."""
    for _ in range(limit):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_goes_to_the_next() -> None:
    # The lost wake-up: A holds the only connection, B and C wait; A releases it, which
    # hands it to B; B is cancelled before it runs. The connection must reach C (before the
    # fix C waited for its whole timeout, "no connection ... became free in time", while the
    # connection sat idle in the pool).
    transport = H1Transport(max_connections=1)
    box: list[Server] = []
    async with Server(keep_alive(box)) as server:
        box.append(server)
        holder = await transport.handle_async_stream(request(server.url))
        b = asyncio.ensure_future(transport.handle_async_request(request(server.url)))
        c = asyncio.ensure_future(transport.handle_async_request(request(server.url,
                                                                         timeout=2.0)))
        await steps_until(lambda: len(transport._slot_waiters) == 2)
        assert await holder.aread() == b"ok"
        await holder.aclose()  # hands the connection to B ...
        b.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await b
        # B's cancellation passed the connection on: nobody waits with it idle in the pool.
        assert not transport._slot_waiters
        assert not transport._pools[server.url].idle
        assert (await c).content == b"ok"
        assert server.connections == 1
        await transport.aclose()


# -- the pool's hand-off, on a fake network and a fake clock ------------------------------
#
# The loop below is a real asyncio loop whose clock only moves when a test moves it and
# whose ``create_connection`` opens in-memory connections (a server answering ``OK`` one
# loop step after each request): the transport's own code runs, and every interleaving of
# acquire, release, cancel and timeout is reproducible step by step.

INSTANCES = ("http://10.0.0.1:80", "http://10.0.0.2:80")


class FakeSocket(asyncio.Transport):
    """One in-memory connection: each request is answered one loop step later; a close
    reaches the protocol one step later, as a socket's would."""

    def __init__(self, loop: FakeNetLoop, protocol: asyncio.Protocol, instance: str) -> None:
        super().__init__()
        self.loop = loop
        self.protocol = protocol
        self.instance = instance
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closing:
            self.loop.call_soon(self._answer)

    def _answer(self) -> None:
        if not self.closing:
            self.protocol.data_received(OK)

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class FakeNetLoop(asyncio.SelectorEventLoop):
    """A loop whose clock (``now``) moves only when a test moves it; connects in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.sockets: list[FakeSocket] = []
        self.refuse = 0  # refuse this many connects next

    def time(self) -> float:
        return self.now

    async def create_connection(self, protocol_factory, host=None, port=None, **kwargs):
        if self.refuse:
            self.refuse -= 1
            raise ConnectionRefusedError(f"{host}:{port} refused")
        protocol = protocol_factory()
        sock = FakeSocket(self, protocol, f"http://{host}:{port}")
        self.sockets.append(sock)
        protocol.connection_made(sock)
        return sock, protocol

    def open_sockets(self, instance: str | None = None) -> list[FakeSocket]:
        return [s for s in self.sockets
                if not s.closing and (instance is None or s.instance == instance)]

    async def settle(self) -> None:
        """Run until nothing but timers is left to run (the clock stands still)."""
        for _ in range(10_000):
            await asyncio.sleep(0)
            if not self._ready:  # (asyncio's queue of callbacks to run now)
                return
        raise AssertionError("the loop never settled")


def run_on_fake_net(test: Callable[[FakeNetLoop], Awaitable[None]]) -> None:
    loop = FakeNetLoop()
    try:
        loop.run_until_complete(test(loop))
    finally:  # (a failed check leaves calls behind: end them before the loop closes)
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        if left:
            loop.run_until_complete(asyncio.wait(left))
        loop.close()


def assert_no_call_waits_beside_a_free_slot(transport: H1Transport, loop: FakeNetLoop,
                                            waiting: list[str], limit: int,
                                            per_instance: int) -> None:
    """At rest (where a call not finished is one waiting for a slot: the fake network
    answers at once), the calls waiting (their instances: ``waiting``) have nothing they
    could take: an idle connection to their instance, room for a new one, or an idle
    connection to close to make that room; and the counts are the open connections."""
    pools = transport._pools
    for instance, pool in pools.items():
        assert pool.count == len(loop.open_sockets(instance)), "a slot leaked"
        assert all(not conn.lost for conn in pool.idle)
    assert transport.open_connections == len(loop.open_sockets())
    any_idle = any(pool.idle for pool in pools.values())
    for instance in waiting:
        pool = pools[instance]
        assert not pool.idle, "a call waits beside an idle connection to its instance"
        own_room = per_instance <= 0 or pool.count < per_instance
        all_room = limit <= 0 or transport.open_connections < limit or any_idle
        assert not (own_room and all_room), "a call waits while a slot is free"


def test_a_waiter_that_times_out_once_handed_the_connection_passes_it_on() -> None:
    # A releases the only connection in the very loop step in which B's deadline fires: B
    # is handed the connection, then times out before it runs. C must get it.
    async def scenario(loop: FakeNetLoop) -> None:
        transport = H1Transport(max_connections=1)
        url = INSTANCES[0]
        holder = await transport.handle_async_stream(request(url))
        b = loop.create_task(transport.handle_async_request(request(url, timeout=1.0)))
        c = loop.create_task(transport.handle_async_request(request(url, timeout=None)))
        await loop.settle()
        assert len(transport._slot_waiters) == 2
        loop.now += 1.0  # B's deadline: its timer runs in the next step, after this task
        await asyncio.sleep(0)
        await holder.aclose()  # hands the connection to B, whose timer then fires
        await loop.settle()
        assert b.done()
        assert isinstance(b.exception(), UpstreamTimeoutError)
        assert c.done()
        assert (c.result().status, c.result().content) == (200, b"ok")
        assert len(loop.sockets) == 1
        await transport.aclose()

    run_on_fake_net(scenario)


def test_a_slot_the_first_waiter_cannot_use_still_serves_the_next_call() -> None:
    # One connection per instance, two in all: A's and B's are busy, a second call to B
    # waits (B's bound). A's connection comes back: the waiter for B cannot use it, and must
    # not swallow it either (before the fix it was woken, closed A's idle connection to make
    # room it still could not use, and went back to waiting, and the next call to A then
    # waited for ever beside a free slot).
    async def scenario(loop: FakeNetLoop) -> None:
        transport = H1Transport(max_connections=2, max_connections_per_instance=1)
        a, b = INSTANCES
        on_a = await transport.handle_async_stream(request(a))
        on_b = await transport.handle_async_stream(request(b))
        second_b = loop.create_task(transport.handle_async_request(request(b, timeout=None)))
        await loop.settle()
        await on_a.aclose()
        again_a = loop.create_task(transport.handle_async_request(request(a, timeout=None)))
        await loop.settle()
        assert again_a.done()
        assert again_a.result().status == 200
        assert not second_b.done()
        await on_b.aclose()
        await loop.settle()
        assert second_b.done()
        assert second_b.result().status == 200
        assert len(loop.sockets) == 2
        await transport.aclose()

    run_on_fake_net(scenario)


Op = tuple[str, int]
#: What can happen, repeated by how often (hypothesis draws uniformly): ``call`` starts a
#: call (its argument picks the instance and the timeout), ``release`` gives a response's
#: connection back, ``cancel`` cancels a call not finished, ``server_close`` closes one open
#: connection from the server's side, ``refuse`` makes the next connect fail, ``advance``
#: moves the clock (timers due run at the next step), ``step`` runs the loop one step. The
#: operations come in batches, each run without a loop step between its operations (unless
#: it holds a ``step``) and followed by the loop settling and the check.
_KINDS = (["call"] * 5 + ["release"] * 4 + ["cancel"] * 3 + ["step"] * 2 + ["advance"] * 2
          + ["server_close", "refuse"])
_BATCHES = st.lists(st.lists(st.tuples(st.sampled_from(_KINDS), st.integers(0, 5)),
                             min_size=1, max_size=4), max_size=15)
_TIMEOUTS = (None, 0.5, 2.0)
_ADVANCES = (0.25, 1.0, 5.0)  # (5 s is past keepalive_expiry: idle connections expire)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limit=st.integers(1, 3), per_instance=st.integers(0, 2), batches=_BATCHES)
def test_no_call_waits_or_times_out_while_a_slot_is_free(
    limit: int, per_instance: int, batches: list[list[Op]],
) -> None:
    # Any interleaving of calls (acquire), releases, cancellations, timeouts (the clock
    # moved past deadlines), server-side closes and refused connects, with or without loop
    # steps between them. At every point of rest no call waits while a slot it could use
    # is free (a call that times out therefore never does beside a free slot), no slot
    # leaks, and once every response is released every call has finished.
    note(f"limit={limit} per_instance={per_instance} batches={batches}")

    async def scenario(loop: FakeNetLoop) -> None:
        transport = H1Transport(max_connections=limit, max_connections_per_instance=per_instance)
        calls: list[asyncio.Task[StreamingResponse]] = []
        instance_of: dict[int, str] = {}
        released: set[int] = set()

        def held() -> list[asyncio.Task[StreamingResponse]]:
            return [t for t in calls if t.done() and not t.cancelled()
                    and t.exception() is None and id(t) not in released]

        async def release(task: asyncio.Task[StreamingResponse]) -> None:
            released.add(id(task))
            await task.result().aclose()  # (runs to the end without a loop step)

        def check() -> None:
            waiting = [instance_of[id(t)] for t in calls if not t.done()]
            assert_no_call_waits_beside_a_free_slot(transport, loop, waiting, limit,
                                                    per_instance)

        for batch in batches:
            for op, arg in batch:
                if op == "call":
                    instance, timeout = INSTANCES[arg % 2], _TIMEOUTS[arg // 2]
                    calls.append(loop.create_task(
                        transport.handle_async_stream(request(instance, timeout=timeout))))
                    instance_of[id(calls[-1])] = instance
                elif op == "release" and held():
                    await release(held()[arg % len(held())])
                elif op == "cancel":
                    pending = [t for t in calls if not t.done()]
                    if pending:
                        pending[arg % len(pending)].cancel()
                elif op == "server_close" and loop.open_sockets():
                    sockets = loop.open_sockets()
                    sockets[arg % len(sockets)].close()
                elif op == "refuse":
                    loop.refuse += 1
                elif op == "advance":
                    loop.now += _ADVANCES[arg % 3]
                elif op == "step":
                    await asyncio.sleep(0)
            await loop.settle()
            check()
        await loop.settle()
        check()
        for _ in range(100):  # everything still waiting is served as the holders release
            if all(t.done() for t in calls):
                break
            for task in held():
                await release(task)
            await loop.settle()
            check()
        assert all(t.done() for t in calls), "a call was never served"
        for task in held():
            await release(task)
        for task in calls:
            if not task.cancelled() and task.exception() is not None:
                assert isinstance(task.exception(), (UpstreamTimeoutError,
                                                     UpstreamConnectError,
                                                     UpstreamResetError))
        await loop.settle()
        check()
        await transport.aclose()
        await loop.settle()
        assert transport.open_connections == 0

    run_on_fake_net(scenario)
