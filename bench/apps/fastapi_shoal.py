"""FastAPI instrumented with Shoal (probes, metrics, JSON access log, trace context)."""

from __future__ import annotations

from fastapi import FastAPI

import shoal.fastapi

app = FastAPI()


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


shoal.fastapi.instrument(app, service="bench")
