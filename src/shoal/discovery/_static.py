"""A resolver whose endpoint tables come from configuration (and :meth:`set_endpoints`)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

from shoal._errors import ConfigurationError
from shoal.discovery._base import Endpoint, EndpointListener

SETTING = "SHOAL_DISCOVERY"


class _StaticSubscription:
    __slots__ = ("_listener", "_resolver", "_service")

    def __init__(
        self, resolver: StaticResolver, service: str, listener: EndpointListener
    ) -> None:
        self._resolver = resolver
        self._service = service
        self._listener = listener

    def cancel(self) -> None:
        self._resolver._unsubscribe(self._service, self._listener)


class StaticResolver:
    """Endpoints fixed by configuration; :meth:`set_endpoints` pushes a change (tests, tools).

    Thread-safe: listeners are called on the thread that calls :meth:`set_endpoints`.
    """

    def __init__(self, services: Mapping[str, Iterable[str]] | None = None) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, tuple[Endpoint, ...]] = {}
        self._listeners: dict[str, list[EndpointListener]] = {}
        for service, urls in (services or {}).items():
            self._tables[service] = tuple(Endpoint(url) for url in urls)

    def subscribe(self, service: str, listener: EndpointListener) -> _StaticSubscription:
        """See :meth:`shoal.discovery.Resolver.subscribe`."""
        with self._lock:
            self._listeners.setdefault(service, []).append(listener)
            table = self._tables.get(service, ())
        listener(table)
        return _StaticSubscription(self, service, listener)

    def _unsubscribe(self, service: str, listener: EndpointListener) -> None:
        with self._lock:
            listeners = self._listeners.get(service, [])
            if listener in listeners:
                listeners.remove(listener)

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        """The current table of ``service`` (for tools; clients subscribe instead)."""
        with self._lock:
            return self._tables.get(service, ())

    def set_endpoints(self, service: str, urls: Iterable[str]) -> None:
        """Replace ``service``'s endpoints and notify its subscribers."""
        table = tuple(Endpoint(url) for url in urls)
        with self._lock:
            self._tables[service] = table
            listeners = list(self._listeners.get(service, ()))
        for listener in listeners:
            listener(table)

    def close(self) -> None:
        with self._lock:
            self._listeners.clear()


def parse_static(spec: str) -> StaticResolver:
    """``users=http://127.0.0.1:8001,http://127.0.0.1:8002;orders=...`` (the part after
    ``static:``) as a resolver. Raises :class:`ConfigurationError` naming ``SHOAL_DISCOVERY``."""
    services: dict[str, list[str]] = {}
    for raw in spec.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, urls = entry.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigurationError(SETTING, f"expected service=url[,url...], got {entry!r}")
        if name in services:
            raise ConfigurationError(SETTING, f"service {name!r} is listed twice")
        endpoints = [url.strip() for url in urls.split(",") if url.strip()]
        if not endpoints:
            raise ConfigurationError(SETTING, f"service {name!r} has no endpoints")
        try:
            for url in endpoints:
                Endpoint(url)
        except ConfigurationError as exc:
            raise ConfigurationError(SETTING, f"service {name!r}: {exc.message}") from exc
        services[name] = endpoints
    return StaticResolver(services)
