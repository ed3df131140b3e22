"""Pure ASGI middleware: probes, metrics, JSON access log, trace context, deadline, 500s.

Plain ASGI (no ``BaseHTTPMiddleware``) so ``ContextVar``s set here are visible to handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from shoal import _metrics
from shoal._chaos import CHAOS_HEADER, ChaosAbort, poller_from_env
from shoal._chassis import LIVEZ, METRICS, READYZ, UNMATCHED_ROUTE, Chassis
from shoal._context import (
    DEADLINE_MS,
    REQUEST_ID,
    TRACEPARENT,
    TRACESTATE,
    TraceContext,
    continue_trace,
    enter_request,
    new_trace_id,
    parse_deadline_ms,
)
from shoal._logging import get_logger
from shoal._problem import PROBLEM_CONTENT_TYPE, problem_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_access = get_logger("shoal.access")
_errors = get_logger("shoal.error")
_JSON = b"application/json"
_B_TRACEPARENT = TRACEPARENT.encode()
_B_TRACESTATE = TRACESTATE.encode()
_B_REQUEST_ID = REQUEST_ID.encode()
_B_DEADLINE = DEADLINE_MS.encode()
_MAX_REQUEST_ID = 200
_B_CHAOS = CHAOS_HEADER.lower().encode()


def route_template(scope: Scope) -> str:
    """The matched route's template (``/users/{id}``), never the raw path."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED_ROUTE


def valid_request_id(value: str | None) -> bool:
    return value is not None and 0 < len(value) <= _MAX_REQUEST_ID and value.isprintable()


async def _send_bytes(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ShoalMiddleware:
    """Wraps any ASGI app with the chassis behaviour for ``chassis``."""

    def __init__(self, app: ASGIApp, chassis: Chassis) -> None:
        self.app = app
        self.chassis = chassis
        # Decided once: without SHOAL_CHAOS=1 the request path only tests ``is None``.
        self._chaos = poller_from_env(chassis.service, chassis.instance)

    async def __call__(  # noqa: PLR0912, PLR0915 - the hot path, inlined on purpose
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in (LIVEZ, READYZ, METRICS) and scope["method"] in ("GET", "HEAD"):
            await self._probe(path, send)
            return

        chassis = self.chassis
        traceparent = tracestate = request_id = deadline_ms = None
        for name, value in scope["headers"]:
            if name == _B_TRACEPARENT:
                traceparent = value.decode("latin-1")
            elif name == _B_REQUEST_ID:
                request_id = value.decode("latin-1")
            elif name == _B_DEADLINE:
                deadline_ms = value.decode("latin-1")
            elif name == _B_TRACESTATE:
                tracestate = value.decode("latin-1")
        if traceparent is None and not valid_request_id(request_id):
            # The common case (an edge request): one random draw for trace, span and request id.
            ids = os.urandom(40).hex()
            trace = TraceContext(trace_id=ids[:32], span_id=ids[32:48])
            request_id = ids[48:]
        else:
            trace = continue_trace(traceparent, tracestate)
            if not valid_request_id(request_id):
                request_id = new_trace_id()
        assert request_id is not None
        start = time.perf_counter()
        deadline = None if deadline_ms is None else parse_deadline_ms(deadline_ms,
                                                                       time.monotonic())
        ctx = enter_request(trace, request_id, deadline)
        rid_header = (_B_REQUEST_ID, request_id.encode("latin-1"))
        method: str = scope["method"]
        state = [500, False]  # status, response started

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state[0] = message["status"]
                state[1] = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        chassis.request_started()
        try:
            if deadline is not None and deadline <= time.monotonic():
                state[0] = 504
                await _send_bytes(
                    send, 504,
                    problem_body(504, detail="The request's deadline was already spent.",
                                 instance=path),
                    PROBLEM_CONTENT_TYPE.encode(), [rid_header],
                )
            elif self._chaos is None or not await self._fault(send_wrapper, path):
                await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the 500 safety net: log, answer, go on
            route = route_template(scope)
            chassis.exception_raised(route, exc)
            _errors.exception("request.failed", method=method, path=path, route=route)
            if not state[1]:
                state[0] = 500
                await _send_bytes(
                    send, 500,
                    problem_body(500, detail="An internal error occurred; it was logged with "
                                             "this trace id.", instance=path),
                    PROBLEM_CONTENT_TYPE.encode(), [rid_header],
                )
        finally:
            duration = time.perf_counter() - start
            route = route_template(scope)
            status = state[0]
            chassis.request_finished(
                method if method in KNOWN_METHODS else "OTHER", route, status, duration
            )
            if _access.is_enabled_for(logging.INFO):
                _access.info(
                    "request",
                    method=method,
                    path=path,
                    route=route,
                    status=status,
                    duration_ms=round(duration * 1000, 3),
                )
            ctx.exit()

    async def _fault(self, send: Send, path: str) -> bool:
        """Apply injected faults; ``True`` when the request was answered (or aborted)."""
        assert self._chaos is not None
        fault = self._chaos.decision()
        if not fault.active:
            return False
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.abort:
            # Headers promising a body that never comes, then the server drops the connection
            # (uvicorn closes the transport when the app raises after the response started).
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-length", b"64"),
                                    (_B_CHAOS, b"abort")]})
            raise ChaosAbort
        if fault.status is not None:
            await _send_bytes(
                send, fault.status,
                problem_body(fault.status, detail="Injected fault (shoal chaos).", instance=path),
                PROBLEM_CONTENT_TYPE.encode(), [(_B_CHAOS, b"errors")])
            return True
        return False

    async def _probe(self, path: str, send: Send) -> None:
        chassis = self.chassis
        if path == LIVEZ:
            body = orjson.dumps({"status": "ok", "service": chassis.service,
                                 "instance": chassis.instance})
            await _send_bytes(send, 200, body, _JSON, [])
        elif path == READYZ:
            results = [] if chassis.draining else await chassis.run_checks_async()
            status, payload = chassis.readiness_body(results)
            await _send_bytes(send, status, orjson.dumps(payload), _JSON,
                              [(b"cache-control", b"no-store")])
        else:
            await _send_bytes(send, 200, _metrics.render(), _metrics.CONTENT_TYPE.encode(), [])
