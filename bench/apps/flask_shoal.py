"""Flask instrumented with Shoal (probes, metrics, JSON access log, trace context)."""

from __future__ import annotations

from flask import Flask

import shoal.flask

app = Flask(__name__)


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


shoal.flask.instrument(app, service="bench")
