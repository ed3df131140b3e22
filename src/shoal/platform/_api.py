"""The control plane's HTTP API (loopback only, bearer token): registry, fleet operations.

The fleet's token (``.shoal/token``) can do everything; the read-only credentials the platform
gives replicas can each ``GET`` one route (:func:`read_only_grants`) and get 403 elsewhere.

Errors are problem+json. ``GET /v1/services/{name}?index=N&wait=S`` is a blocking query: it
answers once the registry index passes N (or after S seconds), so clients keep a pushed table.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shoal._problem import PROBLEM_CONTENT_TYPE, problem_body
from shoal.platform._faults import chaos_routes
from shoal.platform._obsapi import (
    add_observability_routes,
    cursor,
    is_public,
    same_secret,
    seconds,
    session_ok,
)

if TYPE_CHECKING:
    from shoal.platform.controlplane import ControlPlane

MAX_WAIT = 60.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, detail: str, **extra: Any) -> web.Response:
    return web.Response(status=status, body=problem_body(status, detail=detail, extra=extra),
                        content_type=PROBLEM_CONTENT_TYPE.split(";")[0],
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON (UTF-8, -16 or -32, whatever the ``Content-Type`` says);
    400 when it is not."""
    try:
        return json.loads(await request.read())
    except (ValueError, RecursionError):
        raise web.HTTPBadRequest(reason="the body is not JSON") from None


def _json(data: Any, status: int = 200, index: int | None = None) -> web.Response:
    headers = {"X-Shoal-Index": str(index)} if index is not None else None
    return web.json_response(data, status=status, headers=headers,
                             dumps=lambda d: json.dumps(d, separators=(",", ":")))


def read_only_grants(cp: ControlPlane) -> dict[str, str]:
    """The replicas' read-only credentials, each with the one route it may ``GET``.

    Replicas never hold the fleet's token (it can scale, kill and inject faults): local
    discovery reads the registry with one credential, the chaos poller reads the fault board
    with another, and neither can do anything else.
    """
    return {cp.discovery_token: "/v1/services/{name}", cp.chaos_token: "/v1/chaos"}


def refusal(cp: ControlPlane, request: web.Request) -> web.Response | None:
    """The 401 or 403 answer for a request its credential does not allow, else None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    if same_secret(bearer, cp.token) or is_public(request) or session_ok(request, cp.token):
        return None
    granted = next((route for secret, route in read_only_grants(cp).items()
                    if same_secret(bearer, secret)), None)
    if granted is None:
        return problem(401, "A bearer token is required: the fleet's token is in "
                            f"{cp.state.token_path}.")
    resource = request.match_info.route.resource
    if request.method in {"GET", "HEAD"} and resource is not None and (
            resource.canonical == granted):
        return None
    return problem(403, f"This credential can only read GET {granted}.")


def build_api(cp: ControlPlane) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (refused := refusal(cp, request)) is not None:
            return refused
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return problem(exc.status, exc.reason or "error")

    app = web.Application(middlewares=[auth])
    routes = web.RouteTableDef()

    def service_or_404(request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in cp.supervisors:
            raise web.HTTPNotFound(reason=f"no service {name!r} in this fleet")
        return name

    @routes.get("/v1/status")
    async def status(_: web.Request) -> web.Response:
        return _json(cp.status(), index=cp.registry.index)

    @routes.get("/v1/services/{name}")
    async def service(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        after = cursor(request.query, "index") or 0
        wait = seconds(request.query, "wait", MAX_WAIT)
        index = cp.registry.index
        if after and wait > 0:
            index = await cp.registry.wait(after, wait)
        return _json(cp.service_view(name), index=index)

    async def body_json(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        data = await read_json(request)
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(reason="the body must be a JSON object")
        return data

    @routes.post("/v1/services/{name}/scale")
    async def scale(request: web.Request) -> web.Response:
        name = service_or_404(request)
        replicas = (await body_json(request)).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or not 0 <= replicas <= 100:
            return problem(422, "replicas must be an integer from 0 to 100")
        await cp.scale(name, replicas)
        return _json(cp.service_view(name), index=cp.registry.index)

    @routes.post("/v1/services/{name}/rollout")
    async def rollout(request: web.Request) -> web.Response:
        name = service_or_404(request)
        error = await cp.rollout(name, reload_spec=True)
        if error:
            return problem(409, error)
        return _json(cp.service_view(name), index=cp.registry.index)

    @routes.post("/v1/services/{name}/restart")
    async def restart(request: web.Request) -> web.Response:
        name = service_or_404(request)
        error = await cp.rollout(name, reload_spec=False)
        if error:
            return problem(409, error)
        return _json(cp.service_view(name), index=cp.registry.index)

    @routes.post("/v1/shutdown")
    async def shutdown(_: web.Request) -> web.Response:
        cp.request_shutdown()
        return _json({"status": "stopping"}, status=202)

    add_observability_routes(routes, cp)
    app.add_routes(routes)
    app.add_routes(chaos_routes(cp))
    return app
