"""Service discovery: one :class:`Resolver` seam, backends chosen by ``SHOAL_DISCOVERY``.

::

    resolver = shoal.discovery.resolver_from_config(
        "static:users=http://127.0.0.1:8001,http://127.0.0.1:8002"
    )
"""

from shoal.discovery._base import Endpoint, EndpointListener, Resolver, Subscription
from shoal.discovery._config import (
    ResolverFactory,
    register_scheme,
    resolver_from_config,
    resolver_from_env,
)
from shoal.discovery._static import StaticResolver, parse_static

__all__ = [
    "Endpoint",
    "EndpointListener",
    "Resolver",
    "ResolverFactory",
    "StaticResolver",
    "Subscription",
    "parse_static",
    "register_scheme",
    "resolver_from_config",
    "resolver_from_env",
]
