"""A FastAPI app instrumented with Shoal, used by the chassis integration tests."""

from __future__ import annotations

import asyncio
import gc
import os
from pathlib import Path

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

import shoal
import shoal.fastapi

app = FastAPI()
log = shoal.get_logger("tests.app")


class NewUser(BaseModel):
    name: str = Field(min_length=1)
    email: str


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/gc/frozen")
async def gc_frozen() -> dict[str, int]:
    return {"frozen": gc.get_freeze_count()}


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    log.info("item.read", item_id=item_id)
    return {"id": item_id}


@app.post("/users", status_code=201)
async def create_user(user: NewUser) -> NewUser:
    return user


@app.get("/slow")
async def slow(seconds: float = 1.0) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("database password is hunter2")


@app.get("/problem")
async def problem() -> None:
    raise shoal.ProblemError(409, detail="Already exists", headers={"Retry-After": "3"})


@app.post("/raw")
async def raw(request: Request) -> dict[str, int]:
    """Reads the body itself: Starlette raises ``ClientDisconnect`` when the client leaves."""
    return {"bytes": len(await request.body())}


@app.get("/ctx")
async def ctx() -> dict[str, object]:
    trace = shoal.current_trace()
    return {
        "trace_id": trace.trace_id if trace else None,
        "span_id": trace.span_id if trace else None,
        "parent_span_id": trace.parent_span_id if trace else None,
        "request_id": shoal.current_request_id(),
        "remaining": shoal.remaining_time(),
    }


chassis = shoal.fastapi.instrument(app, service=os.environ.get("SHOAL_SERVICE", "fastapi-test"))
# "{instance}" in the path lets a test fail one replica's readiness.
_not_ready = os.environ.get("TEST_NOT_READY_FILE", "").format(
    instance=os.environ.get("SHOAL_INSTANCE", ""))


def marker_absent() -> bool:
    return not (_not_ready and Path(_not_ready).exists())


chassis.add_readiness_check("marker", marker_absent)
