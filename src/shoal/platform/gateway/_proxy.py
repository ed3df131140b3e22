"""The gateway's request handling: route, check, forward through Shoal's client, stream back.

Per request, in order: the chassis part (probes; trace, request id and deadline; chaos faults
when enabled), then a repeated ``Authorization`` (400), route by longest prefix (404, also
``CONNECT``), method (405), dot segments (400), rate limit (429), bearer token (401/403),
declared body size (413); then the request is forwarded with the route's timeout as its
deadline, the request body streaming upstream as it arrives and the response streaming back.
Every refusal is ``application/problem+json``; a body that stalls or is malformed is 408 or
400. Each request is counted in the chassis metrics and logged as one JSON access line, as
499 when the client left before its answer.

It runs on the gateway's own HTTP/1.1 server (:mod:`._server`), not on an ASGI server: that
server hands it the parsed head and writes each answer in one ``write``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import uvloop

from shoal._chaos import CHAOS_HEADER_NAME, delayed_decision, poller_from_env
from shoal._chassis import PROBE_PATHS, UNMATCHED_ROUTE, Chassis
from shoal._context import REQUEST_ID, enter_request, incoming_context
from shoal._errors import (
    BulkheadFullError,
    CircuitOpenError,
    DeadlineExceededError,
    NoHealthyInstanceError,
    RequestBodyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from shoal._logging import get_logger
from shoal._settings import Settings
from shoal.client import AsyncClient, BulkheadPolicy, StreamingResponse, Timeouts
from shoal.client._h1transport import H1Transport
from shoal.discovery import Resolver
from shoal.platform.gateway._auth import AuthError, TokenVerifier
from shoal.platform.gateway._headers import forward_request_headers, forward_response_headers
from shoal.platform.gateway._ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from shoal.platform.gateway._routes import MatchedRoute, RouteTable, has_dot_segment
from shoal.platform.gateway._server import (
    BadBodyError,
    Connection,
    Headers,
    Request,
    RequestBody,
    serve,
)
from shoal.platform.spec import GATEWAY_SERVICE, Gateway

_log = get_logger("shoal.gateway")
_errors = get_logger("shoal.error")
#: Request bodies up to this size with a declared length are read whole before forwarding,
#: so the request stays replayable (an idempotent PUT can be retried); larger ones stream.
BUFFER_LIMIT = 64 * 1024
_B_REQUEST_ID = REQUEST_ID.encode()


def _retry_after(seconds: float) -> Headers:
    return [(b"retry-after", str(max(1, math.ceil(seconds))).encode())]


class GatewayHandler:
    """Handles each request the gateway's server parsed (see the module docstring).

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
        chassis: Chassis | None = None,
    ) -> None:
        self.gateway = gateway
        self.chassis = chassis or Chassis(GATEWAY_SERVICE)
        self.routes = RouteTable(gateway.routes)
        self.max_body = gateway.max_body_bytes
        self._strip = frozenset(n.lower().encode("latin-1")
                                for n in gateway.strip_response_headers)
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
        # Decided once: without SHOAL_CHAOS=1 the request path only tests ``is None``.
        self._chaos = poller_from_env(self.chassis.service, self.chassis.instance)

    def shoal_serve(self, settings: Settings) -> None:
        """Run the gateway's own server (``shoal serve`` calls this) until SIGTERM; drain."""
        gateway = self.gateway
        limits = {"max_connections": gateway.max_connections,
                  "body_timeout": gateway.body_timeout,
                  "small_body_timeout": gateway.small_body_timeout}
        uvloop.run(serve(self, settings, max_body=self.max_body, on_stop=self.aclose,
                         limits=limits))

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.limiter is not None:
            await self.limiter.aclose()
        if self._chaos is not None:
            self._chaos.stop()

    # -- the chassis part ---------------------------------------------------------------------

    async def __call__(self, request: Request, conn: Connection) -> None:
        path = request.path
        if path in PROBE_PATHS and request.method in ("GET", "HEAD"):
            status, body, content_type, extra = await self.chassis.probe(path)
            conn.respond(request, status, [(b"content-type", content_type), *extra], body)
            return
        chassis = self.chassis
        now = time.monotonic()
        trace, request_id, deadline = incoming_context(request.headers, now)
        start = time.perf_counter()
        ctx = enter_request(trace, request_id, deadline)
        rid = (_B_REQUEST_ID, request_id.encode("latin-1"))
        chassis.request_started()
        started = False
        try:
            if deadline is not None and deadline <= now:
                conn.problem(request, 504, "The request's deadline was already spent.", [rid])
            elif self._chaos is None or not await self._fault(request, conn, rid):
                started = True
                await self._proxy(request, conn, rid)
        except Exception as exc:  # noqa: BLE001 - the 500 safety net: log, answer, go on
            route = request.route or UNMATCHED_ROUTE
            chassis.exception_raised(route, exc)
            _errors.exception("request.failed", method=request.method, path=path, route=route)
            if (started and request.status != 500) or conn.closed:
                conn.cut()  # the answer had begun: the caller sees the connection close
            else:
                conn.problem(request, 500, "An internal error occurred; it was logged with "
                                           "this trace id.", [rid])
        finally:
            duration = time.perf_counter() - start
            route = request.route or UNMATCHED_ROUTE
            chassis.finish_request(request.method, path, route, request.status, duration)
            ctx.exit()

    async def _fault(self, request: Request, conn: Connection, rid: tuple[bytes, bytes]) -> bool:
        """Apply injected faults; ``True`` when the request was answered (or aborted)."""
        assert self._chaos is not None
        fault = await delayed_decision(self._chaos)
        if fault is None:
            return False
        if fault.abort:
            # Headers promising a body that never comes, then the connection drops.
            conn.start(request, 500,
                       [(b"content-length", b"64"), (CHAOS_HEADER_NAME, b"abort"), rid],
                       sized=True)
            conn.cut()
            return True
        if fault.status is not None:
            conn.problem(request, fault.status, "Injected fault (shoal chaos).",
                         [(CHAOS_HEADER_NAME, b"errors"), rid])
            return True
        return False

    # -- the gateway part ---------------------------------------------------------------------

    async def _proxy(  # noqa: PLR0911, PLR0912 - one linear sequence of checks, on purpose
        self, request: Request, conn: Connection, rid: tuple[bytes, bytes]
    ) -> None:
        path = request.path
        method = request.method
        # (never forwarded: the gateway is no tunnel; llhttp treats it as an upgrade)
        route = self.routes.match(path) if method != "CONNECT" else None
        if route is not None:
            request.route = route.prefix  # the metric label: bounded, never the raw path
        authorization = None
        for name, value in request.headers:
            if name == b"authorization":
                if authorization is not None:
                    # Which one would be checked and which one would the service trust?
                    conn.problem(request, 400, "More than one Authorization header.", [rid])
                    return
                authorization = value
        if route is None:
            conn.problem(request, 404, "No route matches this path.", [rid])
            return
        if route.methods is not None and method not in route.methods:
            allow = ", ".join(sorted(route.methods)).encode()
            conn.problem(request, 405, f"{method} is not allowed on this route.",
                         [(b"allow", allow), rid])
            return
        if has_dot_segment(path):
            conn.problem(request, 400, "Dot segments are not allowed in the path.", [rid])
            return
        if self.limiter is not None:
            wait = await self.limiter.acquire(request.client_ip or "-")
            if wait > 0:
                conn.problem(request, 429, "Rate limit exceeded; retry later.",
                             [*_retry_after(wait), rid])
                return
        verifier = self._verifiers.get(route.prefix)
        if verifier is not None:
            try:
                # (the one value checked is the one forwarded: repeats were refused above)
                verifier.verify(None if authorization is None else authorization.decode("latin-1"))
            except AuthError as exc:
                conn.problem(request, exc.status, exc.detail,
                             [(b"www-authenticate", exc.challenge.encode()), rid])
                return
        body: bytes | RequestBody | None = request.body
        if request.body is not None:
            length = request.body.declared  # (None: chunked)
            if length is not None and length > self.max_body:
                conn.problem(request, 413, f"The body exceeds {self.max_body} bytes.", [rid])
                return
            if length is not None and length <= BUFFER_LIMIT:
                try:
                    body = await request.body.read_all()
                except BadBodyError as exc:
                    conn.problem(request, exc.status, exc.detail, [rid])
                    return
                if body is None:
                    return  # the caller left, or sent more than it declared
        headers = forward_request_headers(request.headers, client_ip=request.client_ip,
                                          scheme="http")
        target = route.upstream_path(path)
        if request.query:
            target = f"{target}?{request.query.decode('latin-1')}"
        try:
            response = await self.client.stream(
                method, route.service_url + target, headers=headers, body=body,
                timeout=route.timeout,
            )
        except UpstreamError as exc:
            self._upstream_failed(request, conn, exc, route, body, rid)
            return
        await self._relay(request, conn, response, route, rid)

    async def _relay(self, request: Request, conn: Connection, response: StreamingResponse,
                     route: MatchedRoute, rid: tuple[bytes, bytes]) -> None:
        try:
            iterator = response.__aiter__()
            headers = forward_response_headers(response.raw_headers, strip=self._strip)
            length = None
            for name, value in headers:  # (cheaper than decoding the headers mapping)
                if name == b"content-length":
                    length = value
                    break
            headers.append(rid)
            if request.method == "HEAD":
                conn.start(request, response.status, headers, sized=True)
                return
            whole = response.body_if_complete()
            if whole is not None:  # (a small answer that arrived with its head: one write)
                if length is None:
                    conn.respond(request, response.status, headers, whole)
                else:  # (the upstream's own content-length is in ``headers``)
                    conn.start(request, response.status, headers, sized=True, first=whole)
                return
            conn.start(request, response.status, headers, sized=length is not None)
            async for chunk in iterator:
                if conn.closed:
                    break  # the caller left: stop reading (the connection is not reused)
                await conn.send(chunk)
            conn.end()
        except UpstreamError as exc:
            # Too late for a problem response: the caller sees the connection close early.
            _log.warning("gateway.response_aborted", route=route.prefix, error=str(exc))
            conn.cut()
        finally:
            await response.aclose()

    def _upstream_failed(  # noqa: PLR0917
        self, request: Request, conn: Connection, exc: UpstreamError, route: MatchedRoute,
        body: bytes | RequestBody | None, rid: tuple[bytes, bytes],
    ) -> None:
        if isinstance(body, RequestBody) and body.too_large:
            conn.problem(request, 413, f"The body exceeds {self.max_body} bytes.", [rid])
            return
        if isinstance(exc, RequestBodyError):  # the request's own body failed, not the service
            cause = exc.__cause__
            if isinstance(cause, BadBodyError):
                conn.problem(request, cause.status, cause.detail, [rid])
            return  # else the caller left (counted as 499)
        if isinstance(exc, UpstreamStatusError):
            # The upstream's own final 5xx (retries spent): pass it on as it was.
            headers = [
                (n, v) for n, v in forward_response_headers(
                    [(k.encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()],
                    strip=self._strip,
                ) if n != b"content-length"
            ]
            headers.append(rid)
            conn.respond(request, exc.status, headers, exc.body)
            return
        status, detail, extra = _problem_for(exc, route)
        _log.warning("gateway.upstream_failed", route=route.prefix, service=exc.service,
                     error=type(exc).__name__, status=status)
        conn.problem(request, status, detail, [*(extra or ()), rid])


def _problem_for(  # noqa: PLR0911 - one answer per kind of failure
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
    if isinstance(exc, UpstreamResetError):
        return 502, f"{service} closed the connection before answering.", None
    return 502, f"{service} failed.", None


