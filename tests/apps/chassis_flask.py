"""A Flask app instrumented with Shoal, used by the chassis integration tests."""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

from flask import Flask, request
from pydantic import BaseModel, Field

import shoal
import shoal.flask

app = Flask(__name__)
log = shoal.get_logger("tests.app")


class NewUser(BaseModel):
    name: str = Field(min_length=1)
    email: str


@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/gc/frozen")
def gc_frozen() -> dict[str, int]:
    return {"frozen": gc.get_freeze_count()}


@app.get("/items/<int:item_id>")
def item(item_id: int) -> dict[str, int]:
    log.info("item.read", item_id=item_id)
    return {"id": item_id}


@app.post("/users")
def create_user() -> tuple[dict[str, str], int]:
    user = NewUser.model_validate(request.get_json(silent=True) or {})
    return user.model_dump(), 201


@app.post("/raw")
def raw() -> dict[str, int]:
    """Reads the body itself: Werkzeug raises ``ClientDisconnected`` when the client leaves."""
    return {"bytes": len(request.get_data())}


@app.get("/slow")
def slow() -> dict[str, float]:
    seconds = float(request.args.get("seconds", "1"))
    time.sleep(seconds)
    return {"slept": seconds}


@app.get("/boom")
def boom() -> None:
    raise RuntimeError("database password is hunter2")


@app.get("/problem")
def problem() -> None:
    raise shoal.ProblemError(409, detail="Already exists", headers={"Retry-After": "3"})


@app.get("/ctx")
def ctx() -> dict[str, object]:
    trace = shoal.current_trace()
    return {
        "trace_id": trace.trace_id if trace else None,
        "span_id": trace.span_id if trace else None,
        "parent_span_id": trace.parent_span_id if trace else None,
        "request_id": shoal.current_request_id(),
        "remaining": shoal.remaining_time(),
    }


chassis = shoal.flask.instrument(app, service=os.environ.get("SHOAL_SERVICE", "flask-test"))
# "{instance}" in the path lets a test fail one replica's readiness.
_not_ready = os.environ.get("TEST_NOT_READY_FILE", "").format(
    instance=os.environ.get("SHOAL_INSTANCE", ""))


def marker_absent() -> bool:
    return not (_not_ready and Path(_not_ready).exists())


chassis.add_readiness_check("marker", marker_absent)
