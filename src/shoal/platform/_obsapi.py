"""The control API's observability routes: metrics, logs, events, Prometheus SD, dashboard.

The dashboard's static files and ``GET /login`` are public; everything under ``/v1`` needs the
fleet's bearer token, or, for ``GET`` only, the session cookie ``GET /login?token=...`` sets
(HttpOnly, SameSite=Strict, 12 hours): a browser cannot send a bearer header when it navigates,
and a read-only cookie cannot be used to change the fleet.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import math
import time
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shoal.platform._logstore import LEVELS, parse_since
from shoal.platform._registry import READY

if TYPE_CHECKING:
    from shoal.platform.controlplane import ControlPlane

SESSION_COOKIE = "shoal_session"
SESSION_SECONDS = 12 * 3600
MAX_LOG_WAIT = 30.0
_STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml", ".ico": "image/x-icon"}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status,
                             dumps=lambda d: json.dumps(d, separators=(",", ":")))


def same_secret(given: str, secret: str) -> bool:
    """``given`` is ``secret``, compared in constant time (any text: a header or a query
    value may hold characters ``hmac.compare_digest`` refuses to compare as ``str``)."""
    return bool(secret) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), secret.encode("utf-8", "surrogateescape"))


def seconds(query: Mapping[str, str], name: str, limit: float) -> float:
    """The query's ``name`` as seconds to wait: 0 when absent, at most ``limit``; 400 for
    anything but a finite number."""
    try:
        value = float(query.get(name, "0"))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise web.HTTPBadRequest(reason=f"{name} must be a number of seconds")
    return min(limit, value)


def cursor(query: Mapping[str, str], name: str) -> int | None:
    """The query's ``name`` as a non-negative integer (a cursor or an index), None when
    absent; 400 otherwise."""
    text = query.get(name)
    if not text:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise web.HTTPBadRequest(reason=f"{name} must be a non-negative integer")
    return int(text)


def is_public(request: web.Request) -> bool:
    """Paths served without credentials: the dashboard's static files and the login."""
    path = request.path
    return request.method in {"GET", "HEAD"} and (
        path in {"/", "/login", "/favicon.ico"} or path.startswith("/dashboard/"))


def session_value(token: str) -> str:
    """The dashboard cookie's value: derived from, but not revealing, the fleet token."""
    return hmac.new(token.encode(), b"shoal-dashboard-session", hashlib.sha256).hexdigest()


def session_ok(request: web.Request, token: str) -> bool:
    """A read-only request carrying the dashboard's session cookie."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    return (request.method in {"GET", "HEAD"} and bool(token) and bool(cookie)
            and same_secret(cookie, session_value(token)))


@functools.cache
def _static_files() -> frozenset[str]:
    """The dashboard's files: only these names are ever opened."""
    folder = resources.files("shoal.platform.dashboard")
    return frozenset(f.name for f in folder.iterdir()
                     if f.is_file() and "." + f.name.rsplit(".", 1)[-1] in _STATIC_TYPES)


def _static(name: str) -> web.Response:
    if name not in _static_files():
        raise web.HTTPNotFound(reason="no such dashboard file")
    suffix = "." + name.rsplit(".", 1)[-1]
    body = resources.files("shoal.platform.dashboard").joinpath(name).read_bytes()
    return web.Response(body=body, content_type=_STATIC_TYPES[suffix],
                        headers={"Cache-Control": "no-cache",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "img-src 'self' data:; style-src 'self'"})


def _log_filters(query: Mapping[str, str]) -> dict[str, Any]:
    try:
        filters: dict[str, Any] = {
            "service": query.get("service") or None,
            "instance": query.get("instance") or None,
            "level": query.get("level") or None,
            "trace_id": query.get("trace") or None,
            "grep": query.get("grep") or None,
            "since": parse_since(query["since"]) if query.get("since") else None,
            "until": parse_since(query["until"]) if query.get("until") else None,
            "after": cursor(query, "after"),
            "limit": max(1, min(5000, int(query.get("limit", "500")))),
        }
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"bad log query: {exc}") from None
    if filters["level"] and filters["level"].lower() not in LEVELS:
        raise web.HTTPBadRequest(reason=f"unknown level {filters['level']!r}")
    return filters


def add_observability_routes(routes: web.RouteTableDef, cp: ControlPlane) -> None:
    @routes.get("/v1/metrics")
    async def metrics(request: web.Request) -> web.Response:
        history = request.query.get("history", "0") not in {"0", "false", ""}
        return _json(cp.scraper.snapshot(with_history=history))

    @routes.get("/v1/logs")
    async def logs(request: web.Request) -> web.Response:
        """Stored lines; with ``after=CURSOR&wait=S`` a long poll a follower repeats."""
        filters = _log_filters(request.query)
        wait = seconds(request.query, "wait", MAX_LOG_WAIT)
        store = cp.logstore
        if store is None:
            return _json({"entries": [], "cursor": filters["after"] or 0})
        deadline = time.monotonic() + wait
        while True:
            try:
                page = await asyncio.to_thread(store.query, **filters)
            except ValueError as exc:
                raise web.HTTPBadRequest(reason=str(exc)) from None
            if page.entries or filters["after"] is None or time.monotonic() >= deadline:
                break
            filters["after"] = page.cursor
            await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        return _json({"entries": [e.as_dict() for e in page.entries], "cursor": page.cursor})

    @routes.get("/v1/events")
    async def events(request: web.Request) -> web.Response:
        return _json({"events": cp.events.after(cursor(request.query, "after") or 0)})

    @routes.get("/v1/sd/prometheus")
    async def prometheus_sd(_: web.Request) -> web.Response:
        """Prometheus HTTP service discovery: one target group per ready instance."""
        return _json([
            {"targets": [f"127.0.0.1:{r.port}"],
             "labels": {"service": r.service, "instance": r.id, "system": cp.spec.system,
                        "version": str(r.version)}}
            for r in cp.registry.instances() if r.state == READY])

    @routes.get("/login")
    async def login(request: web.Request) -> web.StreamResponse:
        if not same_secret(request.query.get("token", ""), cp.token):
            raise web.HTTPUnauthorized(reason="open the dashboard URL `shoal up` printed "
                                              f"(the token is in {cp.state.token_path})")
        response = web.Response(status=303, headers={"Location": "/dashboard/"})
        response.set_cookie(SESSION_COOKIE, session_value(cp.token), max_age=SESSION_SECONDS,
                            httponly=True, samesite="Strict", path="/")
        return response

    @routes.get("/")
    async def root(_: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": "/dashboard/"})

    @routes.get("/dashboard/")
    async def dashboard(_: web.Request) -> web.Response:
        return _static("index.html")

    @routes.get("/dashboard/{name}")
    async def dashboard_file(request: web.Request) -> web.Response:
        return _static(request.match_info["name"])
