"""WSGI middleware: the chassis behaviour for any WSGI app (the Flask adapter builds on it)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from shoal._chaos import CHAOS_HEADER, poller_from_env
from shoal._chassis import PROBE_PATHS, READYZ, UNMATCHED_ROUTE, Chassis
from shoal._context import (
    RequestContext,
    enter_request,
    parse_deadline_ms,
    request_identity,
)
from shoal._logging import get_logger
from shoal._problem import PROBLEM_CONTENT_TYPE, problem_body

ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIEnviron = dict[str, Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

#: Adapters store the matched route template here (e.g. Flask's ``url_rule.rule``).
ROUTE_KEY = "shoal.route"
_errors = get_logger("shoal.error")


class _Finishing:
    """Wraps a response body; the request is accounted when the server closes it."""

    __slots__ = ("_body", "_finish")

    def __init__(self, body: Iterable[bytes], finish: Callable[[], None]) -> None:
        self._body = body
        self._finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()


class ShoalWSGIMiddleware:
    """Wraps a WSGI app with probes, metrics, JSON access log, trace context and 500s."""

    def __init__(self, app: WSGIApp, chassis: Chassis) -> None:
        self.app = app
        self.chassis = chassis
        # Decided once: without SHOAL_CHAOS=1 the request path only tests ``is None``.
        self._chaos = poller_from_env(chassis.service, chassis.instance)

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "") or "/"
        method: str = environ.get("REQUEST_METHOD", "GET")
        if path in PROBE_PATHS and method in ("GET", "HEAD"):
            return self._probe(path, start_response)

        chassis = self.chassis
        trace, request_id = request_identity(environ.get("HTTP_TRACEPARENT"),
                                             environ.get("HTTP_TRACESTATE"),
                                             environ.get("HTTP_X_REQUEST_ID"))
        start = time.perf_counter()
        deadline_ms = environ.get("HTTP_X_SHOAL_DEADLINE_MS")
        deadline = None if deadline_ms is None else parse_deadline_ms(deadline_ms,
                                                                       time.monotonic())
        scope = enter_request(trace, request_id, deadline)
        status = [500]

        def wrapped_start(
            status_line: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            status[0] = int(status_line[:3])
            headers.append(("X-Request-Id", request_id))
            return start_response(status_line, headers, exc_info)

        finished = [False]

        def finish() -> None:
            if finished[0]:
                return
            finished[0] = True
            self._finish(environ, method, path, status[0], start, scope)

        chassis.request_started()
        try:
            if deadline is not None and deadline <= time.monotonic():
                body: Iterable[bytes] = self._problem(
                    start_response, 504, "The request's deadline was already spent.", path,
                    request_id)
                status[0] = 504
            else:
                faulted = None if self._chaos is None else self._fault(environ, wrapped_start,
                                                                       path, status)
                body = self.app(environ, wrapped_start) if faulted is None else faulted
        except Exception as exc:  # noqa: BLE001 - the 500 safety net: log, answer, go on
            route = environ.get(ROUTE_KEY) or UNMATCHED_ROUTE
            chassis.exception_raised(route, exc)
            _errors.exception("request.failed", method=method, path=path, route=route)
            status[0] = 500
            body = self._problem(
                start_response, 500,
                "An internal error occurred; it was logged with this trace id.", path, request_id)
        if isinstance(body, list):
            finish()
            return body
        return _Finishing(body, finish)

    def _finish(  # noqa: PLR0917 - private, called from one place
        self, environ: WSGIEnviron, method: str, path: str, status: int, start: float,
        scope: RequestContext,
    ) -> None:
        duration = time.perf_counter() - start
        route = environ.get(ROUTE_KEY) or UNMATCHED_ROUTE
        self.chassis.finish_request(method, path, route, status, duration)
        # The server may close the body from another context; the request is over either way.
        with contextlib.suppress(ValueError):
            scope.exit()

    def _fault(
        self, environ: WSGIEnviron, start_response: StartResponse, path: str, status: list[int]
    ) -> list[bytes] | None:
        """Apply injected faults: the answer to send instead of the app's, or ``None``."""
        assert self._chaos is not None
        fault = self._chaos.decision()
        if not fault.active:
            return None
        if fault.delay:
            time.sleep(fault.delay)
        if fault.abort:
            status[0] = 500
            sock = environ.get("gunicorn.socket")
            if isinstance(sock, socket.socket):
                # Drop the connection: the client sees it closed with no answer; gunicorn's
                # write then fails with EPIPE, which it ignores.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            start_response("500 Internal Server Error",
                           [("Content-Length", "0"), (CHAOS_HEADER, "abort")])
            return []
        if fault.status is not None:
            status[0] = fault.status
            body = problem_body(fault.status, detail="Injected fault (shoal chaos).",
                                instance=path)
            start_response(f"{fault.status} Injected Fault",
                           [("Content-Type", PROBLEM_CONTENT_TYPE),
                            ("Content-Length", str(len(body))), (CHAOS_HEADER, "errors")])
            return [body]
        return None

    @staticmethod
    def _problem(
        start_response: StartResponse, status: int, detail: str, path: str, request_id: str
    ) -> list[bytes]:
        body = problem_body(status, detail=detail, instance=path)
        start_response(
            f"{status} {'Gateway Timeout' if status == 504 else 'Internal Server Error'}",
            [("Content-Type", PROBLEM_CONTENT_TYPE), ("Content-Length", str(len(body))),
             ("X-Request-Id", request_id)],
        )
        return [body]

    def _probe(self, path: str, start_response: StartResponse) -> list[bytes]:
        chassis = self.chassis
        ready = path == READYZ and not chassis.draining
        status, body, ctype, _ = chassis.probe_answer(
            path, chassis.run_checks_sync() if ready else [])
        start_response(
            "200 OK" if status == 200 else "503 Service Unavailable",
            [("Content-Type", ctype.decode()), ("Content-Length", str(len(body))),
             ("Cache-Control", "no-store")],
        )
        return [body]
