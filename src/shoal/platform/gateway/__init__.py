"""The API gateway: the system's front door, itself a Shoal chassis service.

::

    SHOAL_GATEWAY_SPEC=shoal.yaml SHOAL_DISCOVERY=... shoal serve shoal.platform.gateway:app

Routes from the spec's ``gateway`` block map path prefixes to services (with an optional
prefix rewrite); requests are forwarded only to the instances discovery knows, through Shoal's
resilient client (balancing, outlier ejection, breaker, budgeted retries of idempotent
requests, the route's timeout as deadline), with bodies streamed both ways. Per route: JWT
bearer auth; per gateway: a body size limit and a per-client rate limit (in process, or in
Redis shared by the replicas). See ``docs/gateway.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shoal._asgi import ShoalMiddleware
from shoal._chassis import Chassis
from shoal._errors import ConfigurationError
from shoal.discovery import Resolver
from shoal.platform.gateway._auth import AuthError, TokenVerifier, mint_token
from shoal.platform.gateway._headers import forward_request_headers, forward_response_headers
from shoal.platform.gateway._proxy import GatewayApp
from shoal.platform.gateway._ratelimit import (
    LocalRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    TokenBuckets,
)
from shoal.platform.gateway._routes import RouteTable
from shoal.platform.spec import GATEWAY_SERVICE, Gateway, load_spec

#: Environment variable naming the spec file the module-level :data:`app` is built from.
SPEC_SETTING = "SHOAL_GATEWAY_SPEC"

__all__ = [
    "GATEWAY_SERVICE",
    "SPEC_SETTING",
    "AuthError",
    "GatewayApp",
    "LocalRateLimiter",
    "RateLimiter",
    "RedisRateLimiter",
    "RouteTable",
    "TokenBuckets",
    "TokenVerifier",
    "create_app",
    "forward_request_headers",
    "forward_response_headers",
    "mint_token",
]


def create_app(
    gateway: Gateway,
    *,
    resolver: Resolver | None = None,
    base_dir: Path | None = None,
    limiter: RateLimiter | None = None,
) -> ShoalMiddleware:
    """The gateway as an ASGI app, wrapped in the chassis middleware (service ``gateway``:
    probes, metrics by route prefix, JSON access log, trace and request id).

    ``resolver`` defaults to ``$SHOAL_DISCOVERY``; relative key files in route ``auth`` are
    resolved against ``base_dir`` (default: the current directory); ``limiter`` replaces the
    one ``gateway.rate_limit`` configures. Raises :class:`~shoal.ConfigurationError` for a
    missing secret, an unreadable key or an unusable discovery setting.
    """
    proxy = GatewayApp(gateway, resolver=resolver, base_dir=base_dir, limiter=limiter)
    return ShoalMiddleware(proxy, Chassis(GATEWAY_SERVICE))


_app: ShoalMiddleware | None = None


def _app_from_env() -> ShoalMiddleware:
    global _app
    if _app is None:
        path = os.environ.get(SPEC_SETTING)
        if not path:
            raise ConfigurationError(SPEC_SETTING, "is not set; the path of the spec file")
        spec = load_spec(path)
        if spec.gateway is None:
            raise ConfigurationError(SPEC_SETTING, f"{path} has no 'gateway' block")
        _app = create_app(spec.gateway, base_dir=Path(path).resolve().parent)
    return _app


def __getattr__(name: str) -> Any:
    # ``app`` is built on first access (``shoal serve shoal.platform.gateway:app``), so
    # importing the package needs no spec.
    if name == "app":
        return _app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
