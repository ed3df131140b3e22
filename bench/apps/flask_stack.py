"""Flask as users assemble it today: prometheus-flask-exporter,
opentelemetry-instrumentation-flask (SDK tracer provider) and a python-json-logger access log.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from prometheus_flask_exporter import PrometheusMetrics

from bench.apps._stack import access_logger, current_ids, tracer_provider

app = Flask(__name__)
_access = access_logger()


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.before_request
def _start_timer() -> None:
    g.access_start = time.perf_counter()


@app.after_request
def _log_access(response: Response) -> Response:
    trace_id, span_id = current_ids()
    _access.info("request", extra={
        "method": request.method, "path": request.path, "status": response.status_code,
        "duration_ms": round((time.perf_counter() - g.access_start) * 1000, 3),
        "trace_id": trace_id, "span_id": span_id,
    })
    return response


PrometheusMetrics(app)
FlaskInstrumentor().instrument_app(app, tracer_provider=tracer_provider())
