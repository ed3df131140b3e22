"""The lean async transport: HTTP/1.1 on raw asyncio protocols (httptools parser), pooled.

Measured against aiohttp on the gateway's path (docs/benchmarks.md, "Gateway"): the request is
one ``write``, the response is parsed in C straight from ``data_received``, connections are
kept alive in a pool per instance, and one timer per exchange replaces per-call timeout
objects. It implements the same seam as :class:`~shoal.client._aiohttp.AiohttpTransport`
(``handle_async_request`` and ``handle_async_stream``), so every client policy applies.

Errors are translated at the boundary: connect failures and connect timeouts →
:class:`UpstreamConnectError`; the deadline or read timeout → :class:`UpstreamTimeoutError`;
a connection that breaks after sending → :class:`UpstreamResetError`; a streamed request
body that raises → :class:`RequestBodyError`; always ``raise ... from`` the original.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from shoal._errors import (
    ConfigurationError,
    RequestBodyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamTimeoutError,
    caused,
)
from shoal.client._h1conn import ConnectionBroke, Exchange, H1Connection, request_head
from shoal.client._transport import Request, Response, StreamingResponse, Timeouts

_INF = float("inf")
# Methods whose request may be sent again on a new connection when a kept-alive one turns out
# to have been closed by the server before answering (it never saw the request).
_REPLAYABLE = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class Pool:
    """The connections to one instance: idle ones (most recently used last) and a count."""

    __slots__ = ("count", "host", "hostport", "idle", "owner", "port", "prefix", "ssl")

    def __init__(self, owner: H1Transport, instance: str) -> None:
        parts = urlsplit(instance)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("instance", f"expected http(s)://host[:port], got "
                                                 f"{instance!r}")
        self.owner = owner
        self.ssl = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.ssl else 80)
        self.hostport = parts.netloc.rpartition("@")[2]
        self.prefix = parts.path.rstrip("/")
        self.idle: list[H1Connection] = []
        self.count = 0

    def forget(self, conn: H1Connection) -> None:
        """A connection closed: it no longer counts, and its slot goes to a waiter."""
        if not conn.counted:
            return  # still connecting (``_connect`` accounts for it), or retired already
        conn.counted = False
        if conn in self.idle:
            self.idle.remove(conn)
        self.owner.uncount(self)
        self.owner.slot_freed()


class _SlotWaiter:
    """A call queued for a connection to ``pool``'s instance. Its future is handed an idle
    connection, or ``None``: room for a new connection, counted for it already. ``fresh``:
    only a new connection will do (the resend after a stale one)."""

    __slots__ = ("fresh", "future", "pool")

    def __init__(self, future: asyncio.Future[H1Connection | None], pool: Pool,
                 fresh: bool) -> None:
        self.future = future
        self.pool = pool
        self.fresh = fresh


class _Headers(Mapping[str, str]):
    """The response headers, case-insensitive (``multidict``), decoded on first use: a proxy
    that only relays ``raw_headers`` never pays for the mapping."""

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._decoded: CIMultiDictProxy[str] | None = None

    def _headers(self) -> CIMultiDictProxy[str]:
        if self._decoded is None:
            self._decoded = CIMultiDictProxy(CIMultiDict(
                [(name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw]
            ))
        return self._decoded

    def __getitem__(self, key: str) -> str:
        return self._headers()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._raw)

    def getall(self, key: str) -> list[str]:
        """Every value of ``key`` (``Set-Cookie``), in order."""
        return self._headers().getall(key, [])

    def __repr__(self) -> str:
        return f"<Headers {list(self._headers().items())!r}>"


class _H1Response(StreamingResponse):
    """A response of this transport: its body (errors translated to the transport errors)
    and its release in one object."""

    __slots__ = ("_conn", "_exchange", "_pool", "_request")

    def __init__(self, exchange: Exchange, raw: list[tuple[bytes, bytes]], conn: H1Connection,
                 pool: Pool, request: Request) -> None:
        # (every slot ``StreamingResponse.__init__`` sets is set here, without its call)
        self.status = exchange.status
        self.headers = _Headers(raw)  # (decoded only if read)
        self.raw_headers = raw
        self.instance = request.instance
        self.attempts = 0
        # (not ``self``: a response referring to itself is a reference cycle, garbage only
        # the cyclic GC frees, with its headers, exchange and request: six objects per
        # proxied request. The methods that would read ``_body`` are overridden here.)
        self._body = exchange
        self._exchange = exchange
        self._conn: H1Connection | None = conn
        self._pool = pool
        self._request = request

    def __aiter__(self) -> _H1Response:
        return self

    def body_if_complete(self) -> bytes | None:
        """The rest of the body when all of it has arrived already (no wait), else ``None``."""
        exchange = self._exchange
        if not exchange.complete or exchange.error is not None:
            return None
        chunks = exchange.chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data

    async def __anext__(self) -> bytes:
        try:
            return await self._exchange.__anext__()
        except (ConnectionBroke, OSError, TimeoutError) as exc:
            raise _translate(self._request, exc) from exc
        except StopAsyncIteration:
            raise
        except Exception as exc:  # the request body's own error (the caller left ...)
            raise _translate(self._request, exc) from exc

    async def aclose(self) -> None:
        """Give the connection back (or close it), exactly once."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.owner.release(conn, self._pool)


def _translate(request: Request, exc: BaseException) -> UpstreamError:
    """The client error for a broken exchange, ``exc`` as its cause (``raise ... from exc``
    alone would not set it in compiled code: :func:`~shoal._errors.caused`)."""
    if isinstance(exc, TimeoutError):
        return caused(UpstreamTimeoutError(f"{request.method} {request.url} timed out",
                                           service=request.service, instance=request.instance),
                      exc)
    if request.stream is not None and not isinstance(exc, ConnectionBroke | OSError):
        # (the connection only fails with those: anything else is the body's own error)
        return caused(RequestBodyError(f"the request body failed: {exc!r}",
                                       service=request.service, instance=request.instance), exc)
    return caused(UpstreamResetError(f"connection to {request.instance} broke: {exc!r}",
                                     service=request.service, instance=request.instance), exc)


class H1Transport:
    """Pooled HTTP/1.1 connections (see the module docstring).

    ``max_connections`` bounds open connections in all (``0``: no bound) and
    ``max_connections_per_instance`` per instance; a call finding the bound reached closes an
    idle connection to another instance, or waits for one to be released (within its
    timeout). Waiting calls are served first come first served, each freed slot handed to
    the first one it fits (the released connection itself, or room for a new one, counted
    for that call), so no call waits while a slot it could use is free; a call that leaves
    after being handed one (cancelled, or timed out, before it ran) passes it on, as
    asyncio's ``Semaphore`` does. Idle connections are closed after ``keepalive_expiry``
    seconds unused (below the servers' own keep-alive timeouts, so a request rarely meets a
    connection the server is closing; a request that does, before any answer, is resent
    once on a new connection when its method is idempotent and its body replayable).
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        max_connections: int = 100,
        max_connections_per_instance: int = 0,
        keepalive_expiry: float = 4.0,
    ) -> None:
        self._timeouts = timeouts or Timeouts()
        self._limit = max_connections
        self._per_instance = max_connections_per_instance
        self._expiry = keepalive_expiry
        self._pools: dict[str, Pool] = {}
        #: Connections counted in all pools: open, or being opened for a call.
        self._open = 0
        #: Calls waiting for a slot, first come first served.
        self._slot_waiters: deque[_SlotWaiter] = deque()
        self._closed = False
        #: The event loop the connections live on (a transport serves one loop at a time).
        self._loop: asyncio.AbstractEventLoop | None = None
        # One timer for every exchange in flight, due at the earliest of their timeouts (a
        # timer per exchange cost about 3 % of the gateway's CPU per request).
        self._watched: set[H1Connection] = set()
        self._tick: asyncio.TimerHandle | None = None
        self._tick_due = _INF

    @property
    def open_connections(self) -> int:
        """Connections open now, idle ones included (and those being opened)."""
        return self._open

    async def handle_async_request(self, request: Request) -> Response:
        """Send ``request`` and read the whole answer; errors as for :meth:`handle_async_stream`."""
        streaming = await self.handle_async_stream(request)
        try:
            content = await streaming.aread()
        finally:
            await streaming.aclose()
        return Response(streaming.status, streaming.headers, content,
                        instance=request.instance)

    async def handle_async_stream(self, request: Request) -> StreamingResponse:
        """Send ``request`` (its body from ``request.stream`` or ``request.body``) and return
        once the response head has arrived; the body is read as the caller iterates.

        The URL's path and query are sent as given (never normalised), no default headers
        are added, the body passes undecoded. ``request.timeout`` bounds the whole exchange,
        body included; ``timeouts.read`` bounds each wait for bytes.
        """
        pool = self._pools.get(request.instance) or self._pool(request.instance)
        url = request.url
        target = pool.prefix + url[len(request.instance):] if url.startswith(
            request.instance) else url
        if not target.startswith("/"):
            target = "/" + target
        try:
            head = request_head(request.method, target, pool.hostport, request.headers,
                                request.body, streamed=request.stream is not None)
        except ValueError as exc:
            raise caused(ConfigurationError("headers", str(exc)), exc) from exc
        loop = self._loop
        if loop is None or loop.is_closed():
            # (cached: ``get_running_loop`` costs a ``getpid`` system call per call)
            loop = self._loop = asyncio.get_running_loop()
        deadline = None if request.timeout is None else loop.time() + request.timeout
        for attempt in (0, 1):
            # (the resend goes on a new connection, never on another idle one: see below)
            conn = None if attempt else self._take_idle(pool, loop)  # (without a coroutine)
            reused = conn is not None
            if conn is None:
                conn, reused = await self._acquire(pool, loop, deadline, request,
                                                   fresh=bool(attempt))
            timeout = None if deadline is None else deadline - loop.time()
            exchange = conn.send(request.method, head, request.body, request.stream, timeout)
            try:
                while not conn.head_done:  # the response head
                    if exchange.error is not None:
                        raise exchange.error  # noqa: TRY301 - translated by the handlers below
                    await conn.wait()
            except ConnectionBroke as exc:
                self.release(conn, pool)
                if reused and not conn.received_any:
                    # Closed under us while idle: the other idle connections to this instance
                    # are likely as stale (a killed server leaves them all dead), so none of
                    # them is tried next, by this call or the ones after it.
                    self._drop_idle(pool)
                    if (not attempt and request.stream is None
                            and request.method in _REPLAYABLE):
                        continue  # the server never saw this one: send it again
                raise _translate(request, exc) from exc
            except BaseException as exc:
                self.release(conn, pool)
                if isinstance(exc, Exception):  # also the request body's own error
                    raise _translate(request, exc) from exc
                raise
            return _H1Response(exchange, conn.raw_headers, conn, pool, request)
        raise AssertionError("unreachable")  # pragma: no cover

    def watch(self, conn: H1Connection, due: float) -> None:
        """Time ``conn``'s exchange out at ``due`` (or later, as it makes progress)."""
        if due == _INF:
            return
        self._watched.add(conn)
        if due < self._tick_due:
            assert self._loop is not None  # (set by the call that sent the exchange)
            self._arm(self._loop, due)

    def unwatch(self, conn: H1Connection) -> None:
        self._watched.discard(conn)

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self._tick_due = due
        self._tick = loop.call_at(due, self._on_tick, loop)

    def _on_tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._tick = None
        self._tick_due = _INF
        now = loop.time()
        following = _INF
        for conn in list(self._watched):
            due = conn.timer_due(now)
            if due == _INF:
                self._watched.discard(conn)
            elif due <= now:
                self._watched.discard(conn)
                conn.time_out()
            else:
                following = min(following, due)
        if following != _INF:
            self._arm(loop, following)

    def _pool(self, instance: str) -> Pool:
        pool = self._pools[instance] = Pool(self, instance)
        return pool

    def release(self, conn: H1Connection, pool: Pool) -> None:
        if conn.finish() and not self._closed:
            pool.idle.append(conn)
            if self._slot_waiters:
                self.slot_freed()
        elif not conn.lost:
            conn.close()

    def uncount(self, pool: Pool) -> None:
        """One connection of ``pool`` (or the room counted for one) no longer counts."""
        pool.count -= 1
        self._open -= 1

    def _drop_idle(self, pool: Pool) -> None:
        """Close every idle connection to ``pool``'s instance; their slots are free at once
        (not when the close completes)."""
        stale = list(pool.idle)
        pool.idle.clear()
        for conn in stale:
            conn.close()
            pool.forget(conn)  # (``connection_lost`` then finds it forgotten already)

    def _take_idle(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> H1Connection | None:
        """The most recently used idle connection still fit for use, if any."""
        idle = pool.idle
        while idle:
            conn = idle.pop()
            if conn.lost:
                continue
            if loop.time() - conn.idle_since > self._expiry:
                conn.close()
                continue
            return conn
        return None

    async def _acquire(self, pool: Pool, loop: asyncio.AbstractEventLoop,
                       deadline: float | None, request: Request, *, fresh: bool = False,
                       ) -> tuple[H1Connection, bool]:
        """A connection to ``pool``'s instance and whether it was idle (reused); ``fresh``:
        always a new one."""
        while True:
            conn = None if fresh else self._take_idle(pool, loop)
            if conn is not None:
                return conn, True
            if not self._reserve(pool):
                conn = await self._wait_for_slot(pool, loop, deadline, request, fresh)
                if conn is not None:
                    if conn.lost:
                        continue  # closed while handed over (its slot went on then)
                    return conn, True
            return await self._connect(pool, loop, deadline, request), False

    def _reserve(self, pool: Pool) -> bool:
        """Count a new connection to ``pool``'s instance if the bounds allow one, closing the
        least recently used idle connection when that is what stands in the way (its slot is
        free at once, not when the close completes)."""
        per_instance = self._per_instance
        if per_instance > 0 and pool.count >= per_instance:
            if not pool.idle:
                return False
            self._retire(pool, pool.idle.pop(0))  # (only a fresh call leaves these idle)
        elif self._limit > 0 and self._open >= self._limit:
            other = self._pool_with_idle()
            if other is None:
                return False
            self._retire(other, other.idle.pop(0))
        pool.count += 1
        self._open += 1
        return True

    def _pool_with_idle(self) -> Pool | None:
        for other in self._pools.values():
            if other.idle:
                return other
        return None

    def _retire(self, pool: Pool, conn: H1Connection) -> None:
        """Close an idle connection taken out of ``pool.idle``; its slot is free now."""
        conn.close()
        if conn.counted:
            conn.counted = False  # (``connection_lost`` then finds it forgotten)
            self.uncount(pool)

    async def _wait_for_slot(self, pool: Pool, loop: asyncio.AbstractEventLoop,
                             deadline: float | None, request: Request, fresh: bool,
                             ) -> H1Connection | None:
        """Queue until :meth:`slot_freed` hands this call an idle connection (returned) or
        room for a new one (``None``: counted for it already). A call that leaves once it
        was handed one (cancelled, or timed out, before it ran) passes it on."""
        future: asyncio.Future[H1Connection | None] = loop.create_future()
        waiter = _SlotWaiter(future, pool, fresh)
        self._slot_waiters.append(waiter)
        try:
            if deadline is None:
                return await future
            async with asyncio.timeout_at(deadline):
                return await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                self._pass_on(pool, future.result())  # handed a slot it will not use
            elif waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise caused(UpstreamTimeoutError(
                    f"no connection to {request.instance} became free in time",
                    service=request.service, instance=request.instance,
                ), exc) from exc
            raise

    def _pass_on(self, pool: Pool, handed: H1Connection | None) -> None:
        """A waiter handed ``handed`` (``None``: counted room) left without it: the next
        waiter gets it, or the pool."""
        if handed is None:
            self.uncount(pool)
        elif handed.lost:
            return  # closed meanwhile: its slot went on then
        elif self._closed:
            handed.close()  # (``connection_lost`` frees the slot)
            return
        else:
            pool.idle.append(handed)
        self.slot_freed()

    def slot_freed(self) -> None:
        """A connection was released or closed (or a connect failed, or a waiter left with
        its slot): hand what is free to the waiting calls, first come first served, each
        the first thing it fits (an idle connection to its instance, else room for a new
        one). Stops at the first call nothing can serve when nothing is left to close."""
        waiters = self._slot_waiters
        if not waiters:
            return
        loop = self._loop
        assert loop is not None  # (someone waits: a call ran on it)
        unserved: list[_SlotWaiter] = []
        while waiters:
            waiter = waiters.popleft()
            future = waiter.future
            if future.done():
                continue  # cancelled, and leaving (its task has yet to run)
            pool = waiter.pool
            conn = None if waiter.fresh else self._take_idle(pool, loop)
            if conn is not None or self._reserve(pool):
                future.set_result(conn)
                continue
            unserved.append(waiter)
            if self._limit > 0 and self._open >= self._limit and self._pool_with_idle() is None:
                break  # every connection is busy: nobody behind can be served either
        if unserved:
            waiters.extendleft(reversed(unserved))

    async def _connect(self, pool: Pool, loop: asyncio.AbstractEventLoop,
                       deadline: float | None, request: Request) -> H1Connection:
        """A new connection to ``pool``'s instance, its slot counted already (by
        :meth:`_reserve`); a failed connect frees the slot for the next waiter."""
        timeout = self._timeouts.connect
        if deadline is not None:
            left = deadline - loop.time()
            timeout = left if timeout is None else min(timeout, left)
        read = self._timeouts.read
        try:
            if self._closed:
                raise UpstreamConnectError(  # noqa: TRY301 - the slot is given back below
                    f"transport closed; not connecting to {request.instance}",
                    service=request.service, instance=request.instance)
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(pool, loop, read), pool.host, pool.port,
                    ssl=pool.ssl or None, server_hostname=pool.host if pool.ssl else None,
                )
        except BaseException as exc:
            self.uncount(pool)
            self.slot_freed()
            if isinstance(exc, TimeoutError):
                raise caused(UpstreamConnectError(f"connect to {request.instance} timed out",
                                                  service=request.service,
                                                  instance=request.instance), exc) from exc
            if isinstance(exc, OSError):
                raise caused(UpstreamConnectError(f"cannot connect to {request.instance}: {exc}",
                                                  service=request.service,
                                                  instance=request.instance), exc) from exc
            raise
        conn.counted = True
        if conn.lost:  # closed before we could count it: account for it now
            pool.forget(conn)
        return conn

    async def aclose(self) -> None:
        """Close every idle connection and refuse new ones (idempotent)."""
        self._closed = True
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for pool in self._pools.values():
            for conn in list(pool.idle):
                conn.close()
            pool.idle.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost
