"""Pieces of the stack users assemble today, shared by the FastAPI and Flask "stack" apps.

A JSON access log through python-json-logger on stdout (its own handler, not Shoal's), and an
OpenTelemetry SDK ``TracerProvider`` with no span processor: spans are created, sampled and
ended but never exported, which is the cheapest the assembled stack can be. Shoal exports no
spans either, so the comparison is conservative in the stack's favour.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

try:  # python-json-logger >= 3 moved the formatter
    from pythonjsonlogger.json import JsonFormatter
except ImportError:  # pragma: no cover - older python-json-logger
    from pythonjsonlogger.jsonlogger import JsonFormatter  # type: ignore[no-redef]


def tracer_provider() -> TracerProvider:
    return TracerProvider()


def access_logger() -> logging.Logger:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", timestamp=False)
    )
    log = logging.getLogger("stack.access")
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def current_ids() -> tuple[str | None, str | None]:
    """The OpenTelemetry trace and span ids of the current span, as users put them in logs."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
