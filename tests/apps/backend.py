"""An upstream instance: says who it is; ``APP_DELAY`` seconds of latency on ``/whoami``.

Run: ``SHOAL_SERVICE=users APP_DELAY=0.2 python -m shoal serve tests.apps.backend:app``.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI, Request

from shoal.fastapi import instrument

app = FastAPI()
instrument(app)

DELAY = float(os.environ.get("APP_DELAY", "0"))
PORT = os.environ.get("PORT", "?")


@app.get("/whoami")
async def whoami() -> dict[str, str]:
    if DELAY:
        await asyncio.sleep(DELAY)
    return {"port": PORT}


@app.get("/deadline")
async def deadline(request: Request) -> dict[str, str | None]:
    """The deadline header this instance received."""
    return {"port": PORT, "deadline_ms": request.headers.get("x-shoal-deadline-ms")}


@app.get("/hold")
async def hold(seconds: float = 5.0) -> dict[str, str]:
    await asyncio.sleep(seconds)
    return {"port": PORT}
