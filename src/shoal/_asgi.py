"""Pure ASGI middleware: probes, metrics, JSON access log, trace context, deadline, 500s.

Plain ASGI (no ``BaseHTTPMiddleware``) so ``ContextVar``s set here are visible to handlers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from shoal._chaos import CHAOS_HEADER_NAME, delayed_decision, poller_from_env
from shoal._chassis import PROBE_PATHS, UNMATCHED_ROUTE, Chassis
from shoal._context import REQUEST_ID, enter_request, incoming_context
from shoal._logging import get_logger
from shoal._problem import PROBLEM_CONTENT_TYPE, problem_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_errors = get_logger("shoal.error")
_log = get_logger("shoal.chassis")
_B_REQUEST_ID = REQUEST_ID.encode()
#: The status counted for a request whose client left before it was answered (nginx's).
CLIENT_CLOSED_REQUEST = 499


def route_template(scope: Scope) -> str:
    """The matched route's template (``/users/{id}``), never the raw path."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED_ROUTE


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

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in PROBE_PATHS and scope["method"] in ("GET", "HEAD"):
            await self._probe(path, send)
            return

        chassis = self.chassis
        trace, request_id, deadline = incoming_context(scope["headers"], time.monotonic())
        start = time.perf_counter()
        ctx = enter_request(trace, request_id, deadline)
        rid_header = (_B_REQUEST_ID, request_id.encode("latin-1"))
        method: str = scope["method"]
        state = [500, False, False]  # status, response started, client disconnected

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                state[0] = message["status"]
                state[1] = True
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                state[2] = True
            return message

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
                await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the 500 safety net: log, answer, go on
            route = route_template(scope)
            if state[2] and not state[1]:
                # The client left (the app failed reading its body): nobody to answer, and
                # no server error.
                _log.info("request.abandoned", method=method, path=path, route=route,
                          error=type(exc).__name__)
                return
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
            status = CLIENT_CLOSED_REQUEST if state[2] and not state[1] else state[0]
            chassis.finish_request(method, path, route, status, duration)
            ctx.exit()

    async def _fault(self, send: Send, path: str) -> bool:
        """Apply injected faults; ``True`` when the request was answered (or aborted)."""
        assert self._chaos is not None
        fault = await delayed_decision(self._chaos)
        if fault is None:
            return False
        if fault.abort:
            # Headers promising a body that never comes, then the server drops the connection:
            # uvicorn closes the transport when the app returns with the response incomplete.
            # (Returning, not raising: no exception handler of the app takes the fault for an
            # error of its own.)
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-length", b"64"),
                                    (CHAOS_HEADER_NAME, b"abort")]})
            return True
        if fault.status is not None:
            await _send_bytes(
                send, fault.status,
                problem_body(fault.status, detail="Injected fault (shoal chaos).", instance=path),
                PROBLEM_CONTENT_TYPE.encode(), [(CHAOS_HEADER_NAME, b"errors")])
            return True
        return False

    async def _probe(self, path: str, send: Send) -> None:
        status, body, content_type, extra = await self.chassis.probe(path)
        await _send_bytes(send, status, body, content_type, extra)
