"""The ``dns`` backend: endpoint tables from DNS A records (Kubernetes Services, compose).

::

    SHOAL_DISCOVERY=dns                                  # users → A records of "users", :8000
    SHOAL_DISCOVERY=dns:host={service}-headless,port=8000,interval=3

A Kubernetes headless Service (``clusterIP: None``) answers with one A record per ready pod,
and compose's embedded DNS with one per replica, so the client balances over the instances
itself. Options, comma-separated after ``dns:``:

``host``
    Name template to resolve; ``{service}`` is replaced (default ``{service}``). Relative names
    go through the resolv.conf search list (``users`` → ``users.shop.svc.cluster.local``).
``port`` / ``scheme``
    Port and scheme of every endpoint (A records carry no port): ``8000`` / ``http``.
``interval``
    The longest a table may go without re-resolution, seconds (default 5). A shorter record TTL
    shortens it, but never below ``min_interval`` (default 0.5).
``nameserver``, ``timeout``
    ``ip[:port]`` to ask instead of resolv.conf's servers; seconds per query (default 2).

One background thread re-resolves every subscribed service on that schedule and pushes a
changed table to the listeners; a request never resolves. The first subscription to a service
makes one bounded query so the first call already has a table. A failed query (timeout,
SERVFAIL) keeps the last table: a DNS hiccup must not empty every client's table. A name that
does not exist (NXDOMAIN) or has no A records is an empty table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver

from shoal._backoff import exponential
from shoal._errors import ConfigurationError
from shoal._logging import get_logger
from shoal.discovery._base import Endpoint, EndpointListener

SETTING = "SHOAL_DISCOVERY"
_log = get_logger("shoal.discovery")

#: ``lookup(name) -> (addresses, ttl)``; raises :class:`LookupFailed` for a transient failure.
Lookup = Callable[[str], tuple[list[str], float]]


class LookupFailed(Exception):
    """The query got no usable answer (timeout, SERVFAIL, refused): keep the last table."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsOptions:
    """Parsed ``dns:`` options (see the module docstring)."""

    host: str = "{service}"
    port: int = 8000
    scheme: str = "http"
    interval: float = 5.0
    min_interval: float = 0.5
    nameserver: str | None = None
    nameserver_port: int = 53
    timeout: float = 2.0

    def name_of(self, service: str) -> str:
        return self.host.replace("{service}", service)


def _positive(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(SETTING, f"dns option {key}: not a number: {raw!r}") from None
    if not 0 < value <= 3600:
        raise ConfigurationError(SETTING, f"dns option {key}: must be in (0, 3600], got {raw}")
    return value


def _port(key: str, raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigurationError(SETTING, f"dns option {key}: not a port: {raw!r}")
    return int(raw)


def _host(key: str, value: str) -> dict[str, object]:
    if "/" in value or ":" in value:
        raise ConfigurationError(SETTING, f"dns option {key}: not a name: {value!r}")
    return {"host": value}


def _scheme(key: str, value: str) -> dict[str, object]:
    if value not in ("http", "https"):
        raise ConfigurationError(SETTING, f"dns option {key}: http or https, not {value!r}")
    return {"scheme": value}


def _nameserver(key: str, value: str) -> dict[str, object]:
    # ``1.2.3.4``, ``1.2.3.4:5353``, ``::1`` or ``[::1]:5353``.
    address, port = value, ""
    if value.startswith("["):
        address, _, port = value[1:].partition("]")
        port = port.removeprefix(":")
    elif value.count(":") == 1:
        address, _, port = value.partition(":")
    if port:
        return {"nameserver": address, "nameserver_port": _port(key, port)}
    return {"nameserver": address}


_OPTIONS: dict[str, Callable[[str, str], dict[str, object]]] = {
    "host": _host,
    "port": lambda key, value: {key: _port(key, value)},
    "scheme": _scheme,
    "interval": lambda key, value: {key: _positive(key, value)},
    "min_interval": lambda key, value: {key: _positive(key, value)},
    "timeout": lambda key, value: {key: _positive(key, value)},
    "nameserver": _nameserver,
}


def parse_dns_options(config: str) -> DnsOptions:
    """``dns`` or ``dns:key=value,...`` as options; :class:`ConfigurationError` names the
    setting and the bad option."""
    scheme, _, rest = config.strip().partition(":")
    if scheme.lower() != "dns":
        raise ConfigurationError(SETTING, f"expected dns[:key=value,...], got {config!r}")
    opts: dict[str, object] = {}
    for raw in rest.split(","):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            raise ConfigurationError(SETTING, f"dns option {item!r}: expected key=value")
        parse = _OPTIONS.get(key)
        if parse is None:
            known = ", ".join(_OPTIONS)
            raise ConfigurationError(SETTING, f"unknown dns option {key!r} (known: {known})")
        opts.update(parse(key, value))
    parsed = DnsOptions(**opts)  # type: ignore[arg-type]
    if parsed.min_interval > parsed.interval:
        raise ConfigurationError(SETTING, "dns option min_interval must not exceed interval")
    return parsed


def dnspython_lookup(options: DnsOptions) -> Lookup:
    """A :data:`Lookup` asking ``options.nameserver`` (else resolv.conf's) for A records,
    with no cache of its own: the TTL schedule is the resolver's."""
    resolver = dns.resolver.Resolver(configure=options.nameserver is None)
    if options.nameserver is not None:
        resolver.nameservers = [options.nameserver]
        resolver.port = options.nameserver_port
    resolver.timeout = options.timeout
    resolver.lifetime = options.timeout
    resolver.cache = None

    def lookup(name: str) -> tuple[list[str], float]:
        try:
            answer = resolver.resolve(name, "A", search=True)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return [], options.interval
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{type(exc).__name__}: {exc}") from exc
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else options.interval
        return sorted({rdata.address for rdata in answer}), ttl

    return lookup


class _Subscription:
    __slots__ = ("_listener", "_resolver", "_service")

    def __init__(self, resolver: DnsResolver, service: str, listener: EndpointListener) -> None:
        self._resolver = resolver
        self._service = service
        self._listener = listener

    def cancel(self) -> None:
        self._resolver._unsubscribe(self._service, self._listener)


@dataclass(slots=True)
class _Watched:
    table: tuple[Endpoint, ...] = ()
    listeners: list[EndpointListener] | None = None
    due: float = 0.0
    failures: int = 0


class DnsResolver:
    """Endpoint tables from A records, re-resolved in the background (TTL-bounded).

    ``lookup`` is injectable (tests, other record sources); by default dnspython asks the
    configured nameserver. Listeners are called on the resolver's thread (or, for the first
    table, on the subscribing thread).
    """

    def __init__(self, options: DnsOptions | None = None, *, lookup: Lookup | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options or DnsOptions()
        self._lookup = lookup or dnspython_lookup(self.options)
        self._clock = clock
        self._cond = threading.Condition()
        self._watched: dict[str, _Watched] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- the Resolver protocol ----------------------------------------------------------------

    def subscribe(self, service: str, listener: EndpointListener) -> _Subscription:
        """See :meth:`shoal.discovery.Resolver.subscribe`."""
        with self._cond:
            watched = self._watched.get(service)
            fresh = watched is None
            if watched is None:
                watched = self._watched[service] = _Watched(listeners=[])
        if fresh:
            self._refresh(service)
            self._ensure_thread()
        with self._cond:
            assert watched.listeners is not None
            watched.listeners.append(listener)
            table = watched.table
        listener(table)
        return _Subscription(self, service, listener)

    def endpoints(self, service: str) -> Sequence[Endpoint]:
        """The current table of ``service`` (for tools; clients subscribe instead)."""
        with self._cond:
            watched = self._watched.get(service)
            return watched.table if watched else ()

    def close(self) -> None:
        """Stop the background thread (idempotent); tables stop changing."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.options.timeout + 1)

    # -- internals ----------------------------------------------------------------------------

    def _unsubscribe(self, service: str, listener: EndpointListener) -> None:
        with self._cond:
            watched = self._watched.get(service)
            if watched and watched.listeners and listener in watched.listeners:
                watched.listeners.remove(listener)

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="shoal-dns",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _delay(self, ttl: float) -> float:
        return min(max(ttl, self.options.min_interval), self.options.interval)

    def _refresh(self, service: str) -> None:
        """One query for ``service``; apply the answer and schedule the next one."""
        name = self.options.name_of(service)
        try:
            addresses, ttl = self._lookup(name)
        except LookupFailed as exc:
            with self._cond:
                watched = self._watched[service]
                watched.failures += 1
                watched.due = self._clock() + exponential(
                    watched.failures, base=self.options.min_interval,
                    cap=self.options.interval, max_step=10)
            _log.warning("discovery.dns_failed", service=service, name=name, error=str(exc))
            return
        o = self.options
        table = tuple(Endpoint(f"{o.scheme}://{address}:{o.port}") for address in addresses)
        with self._cond:
            watched = self._watched[service]
            watched.failures = 0
            watched.due = self._clock() + self._delay(ttl)
            if table == watched.table:
                return
            watched.table = table
            listeners = list(watched.listeners or ())
        _log.info("discovery.dns_changed", service=service, name=name, endpoints=len(table))
        for listener in listeners:
            listener(table)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = self._clock()
                due = [s for s, w in self._watched.items() if w.due <= now]
                if not due:
                    wait = min((w.due for w in self._watched.values()), default=now + 1) - now
                    self._cond.wait(timeout=max(wait, 0.001))
                    continue
            for service in sorted(due):
                self._refresh(service)


def parse_dns(config: str) -> DnsResolver:
    """The resolver a ``dns[:options]`` setting selects (see the module docstring)."""
    return DnsResolver(parse_dns_options(config))
