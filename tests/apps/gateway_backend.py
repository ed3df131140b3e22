"""A backend for the gateway tests: echoes what it received, counts uploads, waits, fails.

Run: ``SHOAL_SERVICE=users python -m shoal serve tests.apps.gateway_backend:app``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from shoal.fastapi import instrument

app = FastAPI()
instrument(app)

PORT = os.environ.get("PORT", "?")


@app.post("/upload")
@app.put("/upload")
async def upload(request: Request) -> dict[str, object]:
    """Counts (and hashes) the body as it streams in, never holding it."""
    size = 0
    digest = hashlib.sha256()
    async for chunk in request.stream():
        size += len(chunk)
        digest.update(chunk)
    return {"bytes": size, "sha256": digest.hexdigest(), "port": PORT,
            "transfer_encoding": request.headers.get("transfer-encoding"),
            "content_length": request.headers.get("content-length")}


@app.get("/slow")
async def slow(seconds: float = 5.0) -> dict[str, str]:
    await asyncio.sleep(seconds)
    return {"port": PORT}


@app.get("/fail")
async def fail() -> Response:
    return JSONResponse({"error": "boom", "port": PORT}, status_code=500,
                        headers={"x-backend": PORT})


@app.get("/download")
async def download(chunks: int = 4, size: int = 65536) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield b"x" * size

    return StreamingResponse(body(), media_type="application/octet-stream")


@app.get("/cookies")
async def cookies() -> Response:
    response = JSONResponse({"port": PORT})
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    response.headers["connection"] = "x-secret-hop"
    response.headers["x-secret-hop"] = "must-not-pass"
    response.headers["x-powered-by"] = "FastAPI"
    return response


@app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
                                        "OPTIONS"])
async def echo(path: str, request: Request) -> dict[str, object]:
    """Everything the gateway sent: method, raw path, query, headers (repeats joined)."""
    body = await request.body()
    return {
        "port": PORT,
        "method": request.method,
        "path": request.scope.get("raw_path", b"").decode("latin-1"),
        "query": request.scope.get("query_string", b"").decode("latin-1"),
        "headers": dict(request.headers.items()),
        "body": body.decode("latin-1"),
    }
