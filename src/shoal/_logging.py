"""JSON logs: one object per line on stdout, carrying the service, instance and request context.

Every line has ``ts``, ``level``, ``service``, ``instance``, ``trace_id``, ``span_id``,
``request_id``, ``event`` and the event's fields. Standard-library loggers (uvicorn, gunicorn,
libraries) are formatted the same way, their message becoming the ``event``.

Use :func:`get_logger` for structured events::

    log = shoal.get_logger(__name__)
    log.info("order.created", order_id=42, total="12.50")
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from typing import Any

import orjson

from shoal._context import current_context, current_request_id, current_trace

_FIELDS_ATTR = "shoal_fields"
_identity: dict[str, str] = {"service": "unknown", "instance": "unknown"}
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
    _FIELDS_ATTR,
}


def set_identity(*, service: str, instance: str) -> None:
    """Name the service and instance that every log line carries."""
    _identity["service"] = service
    _identity["instance"] = instance


# (whole second, its formatted prefix) and (millisecond, its full text): strftime+gmtime cost
# more than the rest of a line, and a busy server writes many lines per millisecond.
_iso_cache: tuple[int, str] = (-1, "")
_iso_ms: tuple[int, str] = (-1, "")


def _iso(ts: float) -> str:
    global _iso_cache, _iso_ms
    millis = int(ts * 1000)
    cached_ms, text = _iso_ms
    if millis == cached_ms:
        return text
    second, ms = divmod(millis, 1000)
    cached_second, prefix = _iso_cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _iso_cache = (second, prefix)
    text = f"{prefix}.{ms:03d}Z"
    _iso_ms = (millis, text)
    return text


def _default(obj: object) -> str:
    return str(obj)


def record_to_dict(record: logging.LogRecord) -> dict[str, Any]:
    """The JSON object a record becomes (before serialisation)."""
    trace = current_trace()
    out: dict[str, Any] = {
        "ts": _iso(record.created),
        "level": record.levelname.lower(),
        "service": _identity["service"],
        "instance": _identity["instance"],
        "trace_id": trace.trace_id if trace else None,
        "span_id": trace.span_id if trace else None,
        "request_id": current_request_id(),
        "event": record.getMessage(),
        "logger": record.name,
    }
    fields = getattr(record, _FIELDS_ATTR, None)
    if fields:
        out.update(fields)
    # ``extra=`` given to a plain stdlib logger lands as record attributes.
    out.update(
        (key, value)
        for key, value in record.__dict__.items()
        if key not in _RESERVED and not key.startswith("_")
    )
    # (``Any``: a record logged with ``exc_info=False`` holds ``False``, not the typed tuple)
    exc_info: Any = getattr(record, "exc_info", None)
    if exc_info and exc_info[0] is not None:
        out["exception"] = logging.Formatter().formatException(exc_info)
        out.setdefault("error_type", exc_info[0].__name__)
    return out


#: Lines logged on a batching event loop are written at most this many seconds later ...
BATCH_DELAY = 0.02
#: ... or as soon as this many bytes wait.
BATCH_BYTES = 64 * 1024


class _Batch:
    """Lines written on one event loop's thread, joined into one write every
    :data:`BATCH_DELAY` seconds (or :data:`BATCH_BYTES`), as nginx's ``access_log ...
    buffer= flush=`` does."""

    __slots__ = ("lines", "loop", "scheduled", "size", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.get_ident()
        self.lines: list[bytes] = []
        self.size = 0
        self.scheduled = False

    def add(self, line: bytes) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= BATCH_BYTES:
            self.flush()
        elif not self.scheduled:
            self.scheduled = True
            self.loop.call_later(BATCH_DELAY, self.flush)

    def flush(self) -> None:
        self.scheduled = False
        handler = _handler
        if not self.lines or handler is None or threading.get_ident() != self.thread:
            return
        data = b"".join(self.lines)
        self.lines.clear()
        self.size = 0
        with handler.lock or contextlib.nullcontext():
            stream = handler.stream
            buffer = getattr(stream, "buffer", None)
            if buffer is None:
                stream.write(data.decode())
                stream.flush()
            else:  # (JSON lines are UTF-8, as the text layer would write them)
                stream.flush()  # (what the text layer holds goes first)
                buffer.write(data)
                buffer.flush()


_configured = threading.Lock()
_handler: _StdoutHandler | None = None
_batch: _Batch | None = None


def batch_writes(loop: asyncio.AbstractEventLoop | None) -> None:
    """Join the lines logged on ``loop``'s thread (this thread) below ``WARNING`` into one
    write every :data:`BATCH_DELAY` seconds (a write per access line cost the gateway about
    a sixth of its CPU per request). Warnings and errors, and lines from other threads, are
    written at once, after what is pending. ``None`` writes what is pending and turns
    batching off. A process killed with SIGKILL loses at most the last ``BATCH_DELAY``."""
    global _batch, _exit_hooked
    if _batch is not None:
        _batch.flush()
    _batch = None if loop is None else _Batch(loop)
    if _batch is not None and not _exit_hooked:
        atexit.register(_flush_at_exit)
        _exit_hooked = True


_exit_hooked = False


def _flush_at_exit() -> None:
    batch = _batch
    if batch is not None:
        batch.thread = threading.get_ident()  # (the interpreter's last thread writes it)
        batch.flush()


def configure_logging(level: str | int = "INFO") -> None:
    """Route the root logger (and uvicorn's, gunicorn's) to JSON lines on stdout. Idempotent."""
    global _handler
    with _configured:
        root = logging.getLogger()
        if _handler is None:
            _handler = _StdoutHandler()
            _handler.setFormatter(JsonFormatter())
            root.addHandler(_handler)
        root.setLevel(level)
        for name in ("uvicorn", "uvicorn.error", "gunicorn.error"):
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = True
        # Shoal writes its own access log line per request.
        for name in ("uvicorn.access", "gunicorn.access"):
            lg = logging.getLogger(name)
            lg.handlers.clear()
            lg.propagate = False
            lg.disabled = True


_LEVEL_NAMES = {lvl: logging.getLevelName(lvl).lower() for lvl in
                (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)}


def _only_our_handler(logger: logging.Logger, level: int) -> _StdoutHandler | None:
    """Our stdout handler, when it is the one place a record from ``logger`` would go.

    That is: no filters on the logger, no handler anywhere up the hierarchy but ours on the
    root, no custom record factory (it could add fields). Anything else (``capture_logs``,
    pytest's ``caplog``, a user's handler) sends the record through the stdlib path.
    """
    handler = _handler
    if (
        handler is None
        or logger.filters
        or handler.filters
        or level < handler.level
        or logging.getLogRecordFactory() is not logging.LogRecord
    ):
        return None
    node: logging.Logger | None = logger
    while node is not None:
        parent = node.parent
        if parent is None:  # the root
            handlers = node.handlers
            return handler if len(handlers) == 1 and handlers[0] is handler else None
        if node.handlers or not node.propagate:
            return None
        node = parent
    return None  # pragma: no cover - every logger chain ends at the root


def _write_direct(logger: logging.Logger, level: int, event: str, fields: dict[str, Any]) -> bool:
    """Write the line ``record_to_dict`` + ``JsonFormatter`` would, without a ``LogRecord``.

    The stdlib path (record, caller lookup, handler chain) costs several times the line itself
    and sits on every request's path through the access log. Returns ``False`` (nothing
    written) when the record could go anywhere but our handler, or the write failed.
    """
    handler = _only_our_handler(logger, level)
    if handler is None:
        return False
    ctx = current_context()
    trace = ctx.trace
    out: dict[str, Any] = {
        "ts": _iso(time.time()),
        "level": _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower(),
        "service": _identity["service"],
        "instance": _identity["instance"],
        "trace_id": trace.trace_id if trace else None,
        "span_id": trace.span_id if trace else None,
        "request_id": ctx.request_id,
        "event": event,
        "logger": logger.name,
        **fields,
    }
    lock = handler.lock
    if lock is None:
        return False
    try:
        batch = _batch
        if batch is not None and threading.get_ident() == batch.thread:
            if level < logging.WARNING:
                batch.add(orjson.dumps(out, default=_default, option=orjson.OPT_APPEND_NEWLINE))
                return True
            batch.flush()
        line = orjson.dumps(out, default=_default).decode() + handler.terminator
        with lock:
            stream = handler.stream
            stream.write(line)
            stream.flush()
    except Exception:  # noqa: BLE001 - let the stdlib path write it or report the failure
        return False
    return True


_ACCESS_LOGGER = logging.getLogger("shoal.access")


def log_access(method: str, path: str, route: str, status: int, duration: float) -> None:
    """The access line of one request: event ``request`` on logger ``shoal.access`` with
    ``method``, ``path``, ``route``, ``status`` and ``duration_ms`` (it is on every request's
    path, so without the :class:`Logger` call layers)."""
    logger = _ACCESS_LOGGER
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = {"method": method, "path": path, "route": route, "status": status,
              "duration_ms": int(duration * 1_000_000 + 0.5) / 1000}  # (round() is slower)
    if not _write_direct(logger, logging.INFO, "request", fields):
        logger.info("request", extra={_FIELDS_ATTR: fields})


class Logger:
    """A thin structured facade over a standard-library logger: ``log.info(event, **fields)``."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        if not exc and _write_direct(logger, level, event, fields):
            return
        logger.log(level, event, extra={_FIELDS_ATTR: fields}, exc_info=exc, stacklevel=3)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log at error level with the current exception's traceback (never sent to clients)."""
        self._log(logging.ERROR, event, fields, exc=True)

    def is_enabled_for(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


def get_logger(name: str = "shoal") -> Logger:
    """A structured logger; lines are JSON once :func:`configure_logging` has run."""
    return Logger(logging.getLogger(name))


# (At the end: that module reads this one's state. It holds the ``logging`` subclasses, which
# stay interpreted when this module is compiled - see its docstring.)
from shoal._loghandlers import JsonFormatter, _StdoutHandler, capture_logs  # noqa: E402

__all__ = [  # (the public names, re-exports included: callers import them from here)
    "BATCH_BYTES",
    "BATCH_DELAY",
    "JsonFormatter",
    "Logger",
    "batch_writes",
    "capture_logs",
    "configure_logging",
    "get_logger",
    "log_access",
    "record_to_dict",
    "set_identity",
]
