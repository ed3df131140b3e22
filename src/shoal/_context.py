"""Per-request context: W3C trace context, request id and deadline, held in one ``ContextVar``.

The service middleware sets them for each incoming request; app code reads them through
:func:`current_trace`, :func:`current_request_id` and :func:`current_deadline`; the client
propagates them on every outgoing call (:func:`outgoing_headers`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextvars import ContextVar, Token
from random import getrandbits as _getrandbits
from typing import NamedTuple

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
REQUEST_ID = "x-request-id"
#: Remaining time budget of the request, in whole milliseconds.
DEADLINE_MS = "x-shoal-deadline-ms"

_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


class TraceContext(NamedTuple):
    """A W3C trace context: the trace, this span, and the caller's span (if any).

    Immutable (a named tuple: made once per request, several times cheaper than a frozen
    dataclass)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None = None
    sampled: bool = True
    tracestate: str | None = None

    def traceparent(self, span_id: str | None = None) -> str:
        """The ``traceparent`` header value naming ``span_id`` (default: this span) as parent."""
        flags = "01" if self.sampled else "00"
        return f"00-{self.trace_id}-{span_id or self.span_id}-{flags}"


# Ids come from the ``random`` module's generator (as OpenTelemetry's SDK draws them): no
# system call per id, unlike ``os.urandom``, and the module reseeds it in a forked child.
# They identify, they do not authorise: nothing relies on them being unpredictable.


def new_trace_id() -> str:
    return "%032x" % _getrandbits(128)  # noqa: UP031 - the fastest form


def new_span_id() -> str:
    return "%016x" % _getrandbits(64)  # noqa: UP031 - the fastest form


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and _HEX.issuperset(value)


def parse_traceparent(value: str | None) -> tuple[str, str, bool] | None:  # noqa: PLR0911
    """Parse a ``traceparent`` header into ``(trace_id, parent_span_id, sampled)``.

    Returns ``None`` for an absent or malformed value (the caller then starts a new trace);
    never raises.
    """
    if not value:
        return None
    parts = value.strip().lower().split("-")
    if len(parts) < 4:
        return None
    version, trace_id, span_id, flags = parts[0], parts[1], parts[2], parts[3]
    if not (_is_hex(version, 2) and version != "ff"):
        return None
    if version == "00" and len(parts) != 4:
        return None
    if not _is_hex(trace_id, 32) or trace_id == _ZERO_TRACE:
        return None
    if not _is_hex(span_id, 16) or span_id == _ZERO_SPAN:
        return None
    if not _is_hex(flags, 2):
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1)


def continue_trace(traceparent: str | None, tracestate: str | None = None) -> TraceContext:
    """A new span continuing the caller's trace, or a new trace when the header is unusable."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return TraceContext(trace_id=new_trace_id(), span_id=new_span_id())
    trace_id, parent, sampled = parsed
    return TraceContext(
        trace_id=trace_id,
        span_id=new_span_id(),
        parent_span_id=parent,
        sampled=sampled,
        tracestate=tracestate,
    )


_B_TRACEPARENT = TRACEPARENT.encode()
_B_TRACESTATE = TRACESTATE.encode()
_B_REQUEST_ID = REQUEST_ID.encode()
_B_DEADLINE = DEADLINE_MS.encode()
_MAX_REQUEST_ID = 200


def valid_request_id(value: str | None) -> bool:
    return value is not None and 0 < len(value) <= _MAX_REQUEST_ID and value.isprintable()


def incoming_context(
    headers: Iterable[tuple[bytes, bytes]], now: float
) -> tuple[TraceContext, str, float | None]:
    """The trace (continued or new), request id (kept or new) and absolute deadline (on the
    ``time.monotonic()`` clock, ``None`` without a usable header) of an incoming request whose
    header names are lower-case bytes."""
    traceparent = tracestate = request_id = deadline_ms = None
    for name, value in headers:
        if name == _B_TRACEPARENT:
            traceparent = value.decode("latin-1")
        elif name == _B_REQUEST_ID:
            request_id = value.decode("latin-1")
        elif name == _B_DEADLINE:
            deadline_ms = value.decode("latin-1")
        elif name == _B_TRACESTATE:
            tracestate = value.decode("latin-1")
    trace, request_id = request_identity(traceparent, tracestate, request_id)
    return trace, request_id, None if deadline_ms is None else parse_deadline_ms(deadline_ms, now)


def request_identity(
    traceparent: str | None, tracestate: str | None, request_id: str | None
) -> tuple[TraceContext, str]:
    """The span of an incoming request (continuing the caller's trace when its
    ``traceparent`` is usable) and its request id (the caller's when valid, else new)."""
    if traceparent is None and not valid_request_id(request_id):
        # The common case (an edge request): one random draw for trace, span and request id.
        ids = "%080x" % _getrandbits(320)  # noqa: UP031 - the fastest form
        return TraceContext(ids[:32], ids[32:48]), ids[48:]
    trace = continue_trace(traceparent, tracestate)
    if request_id is None or not valid_request_id(request_id):
        request_id = new_trace_id()
    return trace, request_id


class RequestContext:
    """What one request carries: its trace, request id and absolute deadline (or ``None``).

    One ``ContextVar`` holds it (one ``set``/``reset`` per request instead of three); a
    :class:`deadline_scope` installs a copy with the shorter deadline. The one
    :func:`enter_request` made is also the handle to leave it: ``ctx.exit()``."""

    __slots__ = ("_token", "deadline", "request_id", "trace")

    def __init__(
        self, trace: TraceContext | None, request_id: str | None, deadline: float | None
    ) -> None:
        self.trace = trace
        self.request_id = request_id
        #: On the time.monotonic() clock.
        self.deadline = deadline
        self._token: Token[RequestContext] | None = None

    def exit(self) -> None:
        """Restore the context as it was before :func:`enter_request` made this one current."""
        token, self._token = self._token, None
        if token is not None:
            _request.reset(token)


_EMPTY = RequestContext(None, None, None)
_request: ContextVar[RequestContext] = ContextVar("shoal_request", default=_EMPTY)


def current_context() -> RequestContext:
    """Everything the request being handled carries (empty outside a request)."""
    return _request.get()


def current_trace() -> TraceContext | None:
    """The trace context of the request being handled, if any."""
    return _request.get().trace


def current_request_id() -> str | None:
    """The ``x-request-id`` of the request being handled, if any."""
    return _request.get().request_id


def current_deadline() -> float | None:
    """The request's deadline on the ``time.monotonic()`` clock, if it has one."""
    return _request.get().deadline


def remaining_time() -> float | None:
    """Seconds left before the current deadline (may be negative), or ``None`` without one."""
    deadline = _request.get().deadline
    return None if deadline is None else deadline - time.monotonic()


def parse_deadline_ms(value: str | None, now: float) -> float | None:
    """Absolute monotonic deadline from a ``x-shoal-deadline-ms`` value; ``None`` if unusable."""
    if not value:
        return None
    try:
        ms = int(value.strip())
    except ValueError:
        return None
    return now + ms / 1000.0


def enter_request(
    trace: TraceContext, request_id: str | None, deadline: float | None
) -> RequestContext:
    """Make ``trace``, ``request_id`` and ``deadline`` current until ``scope.exit()``."""
    ctx = RequestContext(trace, request_id, deadline)
    ctx._token = _request.set(ctx)
    return ctx


class deadline_scope:
    """Bound everything inside to ``seconds`` from now (never extends an existing deadline)."""

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._token: Token[RequestContext] | None = None

    def __enter__(self) -> float:
        proposed = time.monotonic() + self._seconds
        current = _request.get()
        existing = current.deadline
        deadline = proposed if existing is None else min(existing, proposed)
        self._token = _request.set(RequestContext(current.trace, current.request_id, deadline))
        return deadline

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _request.reset(self._token)


def outgoing_headers(span_id: str | None = None, now: float | None = None) -> dict[str, str]:
    """Headers that carry the current context to a downstream call.

    ``span_id`` is the client span of the outgoing call (a fresh one when omitted). Includes
    ``traceparent`` (and ``tracestate``), ``x-request-id`` and the remaining deadline in ms.
    """
    headers: dict[str, str] = {}
    ctx = _request.get()
    trace = ctx.trace
    if trace is not None:
        flags = "01" if trace.sampled else "00"
        headers[TRACEPARENT] = f"00-{trace.trace_id}-{span_id or new_span_id()}-{flags}"
        if trace.tracestate:
            headers[TRACESTATE] = trace.tracestate
    if ctx.request_id is not None:
        headers[REQUEST_ID] = ctx.request_id
    deadline = ctx.deadline
    if deadline is not None:
        left = deadline - (time.monotonic() if now is None else now)
        headers[DEADLINE_MS] = str(max(0, int(left * 1000)))
    return headers
