"""Service discovery: one :class:`Resolver` seam, backends chosen by ``SHOAL_DISCOVERY``.

::

    resolver = shoal.discovery.resolver_from_config(
        "static:users=http://127.0.0.1:8001,http://127.0.0.1:8002"
    )
    resolver = shoal.discovery.resolver_from_config("etcd+http://127.0.0.1:2379,127.0.0.1:22379")
"""

from shoal.discovery._base import Endpoint, EndpointListener, Resolver, Subscription
from shoal.discovery._config import (
    ResolverFactory,
    register_scheme,
    resolver_from_config,
    resolver_from_env,
)
from shoal.discovery._etcd import EtcdResolver
from shoal.discovery._etcd_client import EtcdClient, EtcdCompactedError, EtcdError, WatchStream
from shoal.discovery._etcd_registration import EtcdRegistration
from shoal.discovery._etcd_table import EndpointTable, EtcdConfig, instance_key, parse_etcd
from shoal.discovery._static import StaticResolver, parse_static

__all__ = [
    "Endpoint",
    "EndpointListener",
    "EndpointTable",
    "EtcdClient",
    "EtcdCompactedError",
    "EtcdConfig",
    "EtcdError",
    "EtcdRegistration",
    "EtcdResolver",
    "Resolver",
    "ResolverFactory",
    "StaticResolver",
    "Subscription",
    "WatchStream",
    "instance_key",
    "parse_etcd",
    "parse_static",
    "register_scheme",
    "resolver_from_config",
    "resolver_from_env",
]
