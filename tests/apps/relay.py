"""A hop that forwards ``/relay/<path>`` to ``http://next/<path>`` with Shoal's async client.

``SHOAL_DISCOVERY`` must name a ``next`` service. A spent deadline answers 504.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from shoal._errors import DeadlineExceededError, UpstreamError
from shoal.client import AsyncClient
from shoal.fastapi import instrument

client = AsyncClient(service=os.environ.get("SHOAL_SERVICE", "relay"))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await client.aclose()


app = FastAPI(lifespan=lifespan)
instrument(app)


@app.get("/relay/{path:path}")
async def relay(path: str, seconds: float | None = None) -> Response:
    query = "" if seconds is None else f"?seconds={seconds}"
    try:
        upstream = await client.get(f"http://next/{path}{query}")
    except DeadlineExceededError as exc:
        return JSONResponse({"error": type(exc).__name__}, status_code=504)
    except UpstreamError as exc:
        return JSONResponse({"error": type(exc).__name__}, status_code=502)
    return Response(upstream.content, status_code=upstream.status, media_type="application/json")
