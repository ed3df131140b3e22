"""The API gateway: the system's front door, itself a Shoal service with its own server.

::

    SHOAL_GATEWAY_SPEC=shoal.yaml SHOAL_DISCOVERY=... shoal serve shoal.platform.gateway:app

Routes from the spec's ``gateway`` block map path prefixes to services (with an optional
prefix rewrite); requests are forwarded only to the instances discovery knows, through Shoal's
resilient client (balancing, outlier ejection, breaker, budgeted retries of idempotent
requests, the route's timeout as deadline), with bodies streamed both ways. Per route: JWT
bearer auth; per gateway: a body size limit and a per-client rate limit (in process, or in
Redis shared by the replicas). It answers the chassis probes, counts and logs every request
like any chassis service, and runs on its own HTTP/1.1 server (uvloop + httptools, chosen by
measurement), which drains on SIGTERM as ``shoal serve`` does for every service. See
``docs/gateway.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shoal._errors import ConfigurationError
from shoal.discovery import Resolver
from shoal.platform.gateway._auth import AuthError, TokenVerifier, mint_token
from shoal.platform.gateway._headers import forward_request_headers, forward_response_headers
from shoal.platform.gateway._proxy import GatewayHandler
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
    "GatewayHandler",
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
) -> GatewayHandler:
    """The gateway (service ``gateway``: probes, metrics by route prefix, JSON access log,
    trace and request id); ``shoal serve`` runs it on its own server
    (:meth:`GatewayHandler.shoal_serve`).

    ``resolver`` defaults to ``$SHOAL_DISCOVERY``; relative key files in route ``auth`` are
    resolved against ``base_dir`` (default: the current directory); ``limiter`` replaces the
    one ``gateway.rate_limit`` configures. Raises :class:`~shoal.ConfigurationError` for a
    missing secret, an unreadable key or an unusable discovery setting.
    """
    return GatewayHandler(gateway, resolver=resolver, base_dir=base_dir, limiter=limiter)


_app: GatewayHandler | None = None


def _app_from_env() -> GatewayHandler:
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
