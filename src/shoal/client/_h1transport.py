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
        """A connection closed: it no longer counts, and its slot may go to a waiter."""
        if not conn.counted:
            return  # still connecting: ``_connect`` accounts for it
        conn.counted = False
        if conn in self.idle:
            self.idle.remove(conn)
        self.count -= 1
        self.owner.slot_freed()


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
    timeout). Idle connections are closed after ``keepalive_expiry`` seconds unused (below
    the servers' own keep-alive timeouts, so a request rarely meets a connection the server is
    closing; a request that does, before any answer, is resent once on a new connection when
    its method is idempotent and its body replayable).
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
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
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
        """Connections open now, idle ones included."""
        return sum(pool.count for pool in self._pools.values())

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
            self.slot_freed()
        elif not conn.lost:
            conn.close()

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
            if self._has_room(pool):
                return await self._connect(pool, loop, deadline, request), False
            self._evict_idle()  # its slot frees once the close is accounted
            await self._wait_for_slot(loop, deadline, request)

    def _has_room(self, pool: Pool) -> bool:
        if self._per_instance > 0 and pool.count >= self._per_instance:
            return False
        return self._limit <= 0 or self.open_connections < self._limit

    def _evict_idle(self) -> None:
        if self._limit <= 0:
            return  # only the per-instance bound applies, and this instance has no idle one
        for other in self._pools.values():
            if other.idle:
                other.idle.pop(0).close()  # the least recently used
                return

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float | None,
                             request: Request) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            if deadline is None:
                await waiter
            else:
                async with asyncio.timeout_at(deadline):
                    await waiter
        except TimeoutError as exc:
            raise caused(UpstreamTimeoutError(
                f"no connection to {request.instance} became free in time",
                service=request.service, instance=request.instance,
            ), exc) from exc
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def slot_freed(self) -> None:
        """A connection was released or closed: let one waiting call look again."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, pool: Pool, loop: asyncio.AbstractEventLoop,
                       deadline: float | None, request: Request) -> H1Connection:
        if self._closed:
            raise UpstreamConnectError(f"transport closed; not connecting to {request.instance}",
                                       service=request.service, instance=request.instance)
        timeout = self._timeouts.connect
        if deadline is not None:
            left = deadline - loop.time()
            timeout = left if timeout is None else min(timeout, left)
        read = self._timeouts.read
        pool.count += 1
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(pool, loop, read), pool.host, pool.port,
                    ssl=pool.ssl or None, server_hostname=pool.host if pool.ssl else None,
                )
        except BaseException as exc:
            pool.count -= 1
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
