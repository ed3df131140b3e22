"""The ``local`` backend: the endpoint tables of the local platform's registry (``shoal up``).

``SHOAL_DISCOVERY=local+http://127.0.0.1:7700`` (the platform sets it, with a read-only
credential in ``SHOAL_DISCOVERY_TOKEN`` that can read the registry and do nothing else; outside
the fleet, the fleet's own token in ``SHOAL_CONTROL_TOKEN`` does too). One watcher thread per
subscribed service long-polls the registry (``GET /v1/services/NAME?index=N&wait=S``): a change
reaches the table as soon as the registry makes it, and a request never waits on discovery.
The first subscription to a service makes one bounded fetch so the first call already has a
table.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Sequence
from urllib.parse import quote, urlsplit

from shoal._backoff import exponential
from shoal._errors import ConfigurationError
from shoal._logging import get_logger
from shoal.discovery._base import Endpoint, EndpointListener

SETTING = "SHOAL_DISCOVERY"
TOKEN_SETTING = "SHOAL_DISCOVERY_TOKEN"  # noqa: S105 - a variable name
#: The fleet's (admin) token, used when ``SHOAL_DISCOVERY_TOKEN`` is not set.
CONTROL_TOKEN_SETTING = "SHOAL_CONTROL_TOKEN"  # noqa: S105 - a variable name
_log = get_logger("shoal.discovery")


class _Subscription:
    __slots__ = ("_listener", "_watch")

    def __init__(self, watch: _Watch, listener: EndpointListener) -> None:
        self._watch = watch
        self._listener = listener

    def cancel(self) -> None:
        self._watch.remove(self._listener)


class _Watch:
    """Keeps one service's table current from blocking queries, on its own thread."""

    def __init__(self, resolver: LocalResolver, service: str) -> None:
        self.resolver = resolver
        self.service = service
        self.table: tuple[Endpoint, ...] = ()
        self.index = 0
        self.listeners: list[EndpointListener] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name=f"shoal-watch-{service}",
                                       daemon=True)

    def fetch(self, wait: float, timeout: float) -> bool:
        """One (blocking) query; applies the answer. False when the registry did not answer."""
        r = self.resolver
        path = f"/v1/services/{quote(self.service)}?index={self.index}&wait={wait:g}"
        conn = http.client.HTTPConnection(r.host, r.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {r.token}"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                _log.warning("discovery.local_error", service=self.service, status=resp.status)
                return False
            data = json.loads(body)
            self.index = int(resp.headers.get("X-Shoal-Index", self.index))
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            conn.close()
        self._apply(tuple(Endpoint(url) for url in data.get("endpoints", [])))
        return True

    def _apply(self, table: tuple[Endpoint, ...]) -> None:
        with self.lock:
            if table == self.table:
                return
            self.table = table
            listeners = list(self.listeners)
        for listener in listeners:
            listener(table)

    def _loop(self) -> None:
        failures = 0
        while not self.resolver.closed.is_set():
            if self.fetch(self.resolver.wait, self.resolver.wait + 10):
                failures = 0
                continue
            # Keep the last table: a control-plane hiccup must not empty every client's table.
            self.resolver.closed.wait(exponential(failures, base=0.1, cap=2.0))
            failures += 1

    def add(self, listener: EndpointListener) -> Sequence[Endpoint]:
        with self.lock:
            self.listeners.append(listener)
            return self.table

    def remove(self, listener: EndpointListener) -> None:
        with self.lock:
            if listener in self.listeners:
                self.listeners.remove(listener)


class LocalResolver:
    """Endpoint tables pushed from the local platform's registry."""

    def __init__(self, url: str, token: str, *, wait: float = 25.0,
                 first_fetch_timeout: float = 1.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ConfigurationError(SETTING, f"expected local+http://host:port, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port
        self.token = token
        self.wait = wait
        self.first_fetch_timeout = first_fetch_timeout
        self.closed = threading.Event()
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()

    def subscribe(self, service: str, listener: EndpointListener) -> _Subscription:
        """See :meth:`shoal.discovery.Resolver.subscribe`."""
        with self._lock:
            watch = self._watches.get(service)
            fresh = watch is None
            if watch is None:
                watch = self._watches[service] = _Watch(self, service)
        if fresh:
            watch.fetch(0, self.first_fetch_timeout)
            watch.thread.start()
        listener(watch.add(listener))
        return _Subscription(watch, listener)

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        with self._lock:
            watch = self._watches.get(service)
        return watch.table if watch else ()

    def close(self) -> None:
        self.closed.set()


def parse_local(config: str) -> LocalResolver:
    """``local+http://127.0.0.1:7700`` with the token from ``SHOAL_DISCOVERY_TOKEN`` (else
    ``SHOAL_CONTROL_TOKEN``)."""
    url = config.partition("+")[2]
    token = os.environ.get(TOKEN_SETTING) or os.environ.get(CONTROL_TOKEN_SETTING)
    if not token:
        raise ConfigurationError(TOKEN_SETTING, "is not set; the local platform sets it for its "
                                                "replicas (outside the fleet, set "
                                                f"{CONTROL_TOKEN_SETTING} to the fleet token in "
                                                ".shoal/token)")
    return LocalResolver(url, token)
