"""The smallest instrumented Shoal service: ``make run`` serves it until the shop exists."""

from __future__ import annotations

from fastapi import FastAPI

import shoal
import shoal.fastapi

app = FastAPI(title="Shoal demo")
log = shoal.get_logger(__name__)


@app.get("/hello")
async def hello(name: str = "world") -> dict[str, str]:
    trace = shoal.current_trace()
    log.info("hello.said", name=name)
    return {"hello": name, "trace_id": trace.trace_id if trace else ""}


chassis = shoal.fastapi.instrument(app, service="demo")
