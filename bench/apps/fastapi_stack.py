"""FastAPI as users assemble it today: prometheus-fastapi-instrumentator,
opentelemetry-instrumentation-fastapi (SDK tracer provider) and a python-json-logger access log.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_fastapi_instrumentator import Instrumentator

from bench.apps._stack import access_logger, current_ids, tracer_provider

app = FastAPI()
_access = access_logger()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


class AccessLogMiddleware:
    """A pure ASGI access-log middleware, the usual hand-written one (inside the OTel span)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            trace_id, span_id = current_ids()
            _access.info("request", extra={
                "method": scope["method"], "path": scope["path"], "status": status[0],
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                "trace_id": trace_id, "span_id": span_id,
            })


app.add_middleware(AccessLogMiddleware)
Instrumentator().instrument(app).expose(app)
FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider())
