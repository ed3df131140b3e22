"""The gateway's ASGI app: route, check, forward through Shoal's client, stream back.

Per request, in order: route by longest prefix (404), method (405), dot segments (400),
rate limit (429), bearer token (401/403), declared body size (413); then the request is
forwarded with the route's timeout as its deadline, the request body streaming upstream as it
arrives and the response streaming back. Every refusal is ``application/problem+json``.
The chassis middleware around this app answers the probes, continues the trace, counts and
logs each request.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

from shoal._asgi import Receive, Scope, Send
from shoal._errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    NoHealthyInstanceError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from shoal._logging import get_logger
from shoal._problem import PROBLEM_CONTENT_TYPE, problem_body
from shoal.client import AsyncClient, BulkheadPolicy, StreamingResponse, Timeouts
from shoal.client._h1transport import H1Transport
from shoal.discovery import Resolver
from shoal.platform.gateway._auth import AuthError, TokenVerifier
from shoal.platform.gateway._headers import forward_request_headers, forward_response_headers
from shoal.platform.gateway._ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from shoal.platform.gateway._routes import MatchedRoute, RouteTable, has_dot_segment
from shoal.platform.spec import GATEWAY_SERVICE, Gateway

_log = get_logger("shoal.gateway")
_PROBLEM = PROBLEM_CONTENT_TYPE.encode()
#: Request bodies up to this size with a declared length are read whole before forwarding,
#: so the request stays replayable (an idempotent PUT can be retried); larger ones stream.
BUFFER_LIMIT = 64 * 1024


class BodyTooLargeError(Exception):
    """The request body grew past ``max_body_bytes`` while streaming."""


class ClientGoneError(Exception):
    """The caller disconnected before its request body was complete."""


class _BodyStream:
    """The ASGI request body as an async iterator of chunks, counted against the limit.

    The server stops reading the socket while its buffer is full, so memory stays bounded by
    a few chunks however large the upload is."""

    __slots__ = ("_limit", "_more", "_receive", "received", "too_large")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._more = True
        self.received = 0
        self.too_large = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while self._more:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._more = False
                raise ClientGoneError
            chunk: bytes = message.get("body", b"")
            self._more = message.get("more_body", False)
            self.received += len(chunk)
            if self.received > self._limit:
                self.too_large = True
                self._more = False
                raise BodyTooLargeError
            if chunk:
                return chunk
        raise StopAsyncIteration


async def _read_small_body(receive: Receive, limit: int) -> bytes | None:
    """The whole (declared small) body; ``None`` when it exceeds ``limit`` or the caller left."""
    parts: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        more = message.get("more_body", False)
    return b"".join(parts)


async def send_problem(
    send: Send, status: int, detail: str, instance: str,
    headers: list[tuple[bytes, bytes]] | None = None, *, title: str | None = None,
) -> None:
    """Answer with an RFC 9457 problem (``trace_id`` and ``request_id`` included)."""
    body = problem_body(status, title=title, detail=detail, instance=instance)
    out = [(b"content-type", _PROBLEM), (b"content-length", str(len(body)).encode())]
    if headers:
        out.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})


def _retry_after(seconds: float) -> list[tuple[bytes, bytes]]:
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


class GatewayApp:
    """The gateway as a plain ASGI app (wrap it in the chassis middleware: :func:`create_app`).

    It only ever forwards to instances its client's resolver names for a route's service:
    the upstream URL is the logical ``http://<service>`` plus a path that always starts with
    ``/``; nothing in the request (``Host``, an absolute-form target, the path) can name a host.
    """

    def __init__(
        self,
        gateway: Gateway,
        *,
        resolver: Resolver | None = None,
        base_dir: Path | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.gateway = gateway
        self.routes = RouteTable(gateway.routes)
        self.max_body = gateway.max_body_bytes
        self._verifiers: dict[str, TokenVerifier] = {}
        for compiled in self.routes._routes:
            if compiled.route.auth is not None:
                self._verifiers[compiled.prefix] = TokenVerifier(
                    compiled.route.auth, base_dir=base_dir
                )
        if limiter is None and gateway.rate_limit is not None:
            rl = gateway.rate_limit
            limiter = (
                RedisRateLimiter(url=rl.redis_url, rate=rl.rate, burst=rl.burst)
                if rl.redis_url
                else LocalRateLimiter(rate=rl.rate, burst=rl.burst)
            )
        self.limiter = limiter
        longest = max(r.timeout for r in gateway.routes)
        self.client = AsyncClient(
            service=GATEWAY_SERVICE,
            resolver=resolver,
            # The route's timeout is each call's deadline; ``read`` bounds the wait for bytes.
            timeouts=Timeouts(connect=1.0, read=longest, total=longest),
            bulkhead=BulkheadPolicy(max_concurrent=4096),
            transport=H1Transport(
                timeouts=Timeouts(connect=1.0, read=longest, total=longest),
                max_connections=1024,
            ),
        )
        for compiled in self.routes._routes:  # subscribe to discovery now, not per request
            self.client.upstream(compiled.route.service)

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not proxied
            await receive()
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(  # noqa: PLR0911, PLR0912, PLR0915 - one linear sequence of checks, on purpose
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        route = self.routes.match(path)
        if route is None:
            await send_problem(send, 404, "No route matches this path.", scope["path"])
            return
        scope["route"] = route.label
        method: str = scope["method"]
        if route.methods is not None and method not in route.methods:
            allow = ", ".join(sorted(route.methods)).encode()
            await send_problem(send, 405, f"{method} is not allowed on this route.",
                               scope["path"], [(b"allow", allow)])
            return
        if has_dot_segment(path):
            await send_problem(send, 400, "Dot segments are not allowed in the path.",
                               scope["path"])
            return
        client = scope.get("client")
        client_ip = client[0] if client else None
        if self.limiter is not None:
            wait = await self.limiter.acquire(client_ip or "-")
            if wait > 0:
                await send_problem(send, 429, "Rate limit exceeded; retry later.",
                                   scope["path"], _retry_after(wait))
                return
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        length: int | None = None
        chunked = False
        authorization = None
        for name, value in raw_headers:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        verifier = self._verifiers.get(route.prefix)
        if verifier is not None:
            try:
                verifier.verify(authorization)
            except AuthError as exc:
                await send_problem(send, exc.status, exc.detail, scope["path"],
                                   [(b"www-authenticate", exc.challenge.encode())])
                return
        if length is not None and length > self.max_body:
            await send_problem(send, 413, f"The body exceeds {self.max_body} bytes.",
                               scope["path"])
            return
        body: bytes | _BodyStream | None = None
        if chunked or (length is not None and length > BUFFER_LIMIT):
            body = _BodyStream(receive, self.max_body)
        elif length:
            body = await _read_small_body(receive, min(length, self.max_body))
            if body is None:
                return  # the caller left, or sent more than it declared
        headers = forward_request_headers(
            raw_headers, client_ip=client_ip, scheme=scope.get("scheme", "http")
        )
        target = route.upstream_path(path)
        query: bytes = scope.get("query_string", b"")
        if query:
            target = f"{target}?{query.decode('latin-1')}"
        try:
            response = await self.client.stream(
                method, route.service_url + target, headers=headers, body=body,
                timeout=route.timeout,
            )
        except UpstreamError as exc:
            await self._upstream_failed(send, exc, route, scope, body)
            return
        await self._relay(send, response, route)

    async def _relay(self, send: Send, response: StreamingResponse, route: MatchedRoute) -> None:
        try:
            iterator = response.__aiter__()
            headers = forward_response_headers(response.raw_headers)
            length = None
            for name, value in headers:  # (cheaper than decoding the headers mapping)
                if name == b"content-length":
                    length = value
                    break
            try:
                first = await iterator.__anext__()
            except StopAsyncIteration:
                first = b""
                done = True
            else:
                done = length is not None and length == b"%d" % len(first)
            await send({"type": "http.response.start", "status": response.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": first, "more_body": not done})
            if done:
                return
            async for chunk in iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except UpstreamError as exc:
            # Too late for a problem response: the caller sees the connection close early.
            _log.warning("gateway.response_aborted", route=route.prefix, error=str(exc))
        finally:
            await response.aclose()

    async def _upstream_failed(
        self, send: Send, exc: UpstreamError, route: MatchedRoute, scope: Scope,
        body: bytes | _BodyStream | None,
    ) -> None:
        instance = scope["path"]
        if isinstance(body, _BodyStream):
            if body.too_large:
                await send_problem(send, 413, f"The body exceeds {self.max_body} bytes.",
                                   instance)
                return
            cause = exc.__cause__
            if isinstance(cause, ClientGoneError) or isinstance(
                getattr(cause, "__cause__", None), ClientGoneError
            ):
                return
        if isinstance(exc, UpstreamStatusError):
            # The upstream's own final 5xx (retries spent): pass it on as it was.
            headers = [
                (n, v) for n, v in forward_response_headers(
                    [(k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
                ) if n != b"content-length"
            ]
            headers.append((b"content-length", str(len(exc.body)).encode()))
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": headers})
            await send({"type": "http.response.body", "body": exc.body})
            return
        status, detail, extra = _problem_for(exc, route)
        _log.warning("gateway.upstream_failed", route=route.prefix, service=exc.service,
                     error=type(exc).__name__, status=status)
        await send_problem(send, status, detail, instance, extra)


def _problem_for(
    exc: UpstreamError, route: MatchedRoute
) -> tuple[int, str, list[tuple[bytes, bytes]] | None]:
    service = route.route.service
    if isinstance(exc, CircuitOpenError):
        return 503, f"{service} is failing; its circuit is open.", _retry_after(exc.retry_after)
    if isinstance(exc, NoHealthyInstanceError):
        return 503, f"No healthy instance of {service}.", _retry_after(1)
    if isinstance(exc, BulkheadFullError):
        return 503, f"Too many requests in flight to {service}.", _retry_after(1)
    if isinstance(exc, DeadlineExceededError | UpstreamTimeoutError):
        return 504, f"{service} did not answer within the deadline.", None
    if isinstance(exc, UpstreamConnectError):
        return 502, f"{service} could not be reached.", None
    return 502, f"{service} failed.", None


