"""Choosing the discovery backend from ``SHOAL_DISCOVERY`` by its scheme prefix."""

from __future__ import annotations

import os
from collections.abc import Callable

from shoal._errors import ConfigurationError
from shoal.discovery._base import Resolver
from shoal.discovery._local import parse_local
from shoal.discovery._static import SETTING, parse_static

#: ``factory(config)`` receives the whole setting, scheme included.
ResolverFactory = Callable[[str], Resolver]


def _dns(config: str) -> Resolver:
    from shoal.discovery._dns import parse_dns  # noqa: PLC0415 - dnspython: the client extra

    return parse_dns(config)


def _etcd(config: str) -> Resolver:
    from shoal.discovery._etcd import etcd_resolver  # noqa: PLC0415 - only when selected

    return etcd_resolver(config)


_SCHEMES: dict[str, ResolverFactory] = {
    "etcd": _etcd,  # etcd+http://host:port[,host:port...][/root]
    "static": lambda config: parse_static(config.partition(":")[2]),
    "dns": _dns,
    "local": parse_local,
}


def register_scheme(scheme: str, factory: ResolverFactory) -> None:
    """Make ``resolver_from_config`` build ``factory(config)`` for settings of ``scheme``
    (e.g. ``"etcd"`` for ``etcd+http://...``). Replaces an earlier registration."""
    _SCHEMES[scheme] = factory


def scheme_of(config: str) -> str:
    """The backend name of a setting: ``static:...`` → ``static``, ``etcd+http://...`` →
    ``etcd``, ``dns`` → ``dns``."""
    end = len(config)
    for sep in (":", "+"):
        index = config.find(sep)
        if index != -1:
            end = min(end, index)
    return config[:end].strip().lower()


def resolver_from_config(config: str) -> Resolver:
    """The resolver a ``SHOAL_DISCOVERY`` value selects.

    Raises :class:`ConfigurationError` (setting ``SHOAL_DISCOVERY``) for an empty value, an
    unknown scheme or a malformed backend configuration.
    """
    if not config or not config.strip():
        raise ConfigurationError(SETTING, "is empty; e.g. static:users=http://127.0.0.1:8001")
    scheme = scheme_of(config.strip())
    factory = _SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(sorted(_SCHEMES))
        raise ConfigurationError(
            SETTING, f"unknown discovery scheme {scheme!r} (known: {known})"
        )
    return factory(config.strip())


def resolver_from_env() -> Resolver:
    """The resolver ``$SHOAL_DISCOVERY`` selects; :class:`ConfigurationError` when unset."""
    config = os.environ.get(SETTING)
    if config is None:
        raise ConfigurationError(SETTING, "is not set; e.g. static:users=http://127.0.0.1:8001")
    return resolver_from_config(config)
