"""The pure part of etcd discovery: the setting, the key layout and the endpoint table.

No sockets here. The table is fed the JSON the etcd v3 gateway returns (``kvs`` of a range,
``events`` of a watch; keys and values base64) and answers which services changed, so the
watching shell only has to notify their subscribers.

Key layout (one key per instance, attached to the instance's lease)::

    {root}/services/{service}/{instance}  →  {"url": "http://127.0.0.1:8001",
                                              "service": "users", "instance": "host-4242"}

``service`` and ``instance`` are percent-encoded (``/`` included), so any name round-trips.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import orjson

from shoal._backoff import full_jitter
from shoal._errors import ConfigurationError
from shoal.discovery._base import Endpoint

SETTING = "SHOAL_DISCOVERY"
DEFAULT_ROOT = "/shoal"
DEFAULT_PORT = 2379


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Where the registry lives: etcd members' client URLs and the key root of this fleet."""

    endpoints: tuple[str, ...]
    root: str = DEFAULT_ROOT

    @property
    def prefix(self) -> str:
        """The key prefix every instance key starts with (``/shoal/services/``)."""
        return f"{self.root}/services/"


def parse_etcd(config: str) -> EtcdConfig:
    """``etcd+http://host:port[,host:port...][/root]`` as an :class:`EtcdConfig`.

    The port defaults to 2379; the optional path replaces the key root ``/shoal`` (several
    fleets can share one etcd). Raises :class:`ConfigurationError` naming ``SHOAL_DISCOVERY``.
    """
    text = config.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != "etcd+http":
        raise ConfigurationError(
            SETTING, f"expected etcd+http://host:port[,host:port...][/root], got {config!r}")
    if "://" in rest:
        raise ConfigurationError(
            SETTING, f"list members as host:port after one etcd+http://, got {config!r}")
    hosts, slash, path = rest.partition("/")
    root = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_ROOT
    if any(c in root for c in "?#") or "//" in root:
        raise ConfigurationError(SETTING, f"bad key root {root!r} in {config!r}")
    endpoints: list[str] = []
    for raw in hosts.split(","):
        entry = raw.strip()
        if not entry:
            continue
        host, port = _split_host_port(entry, config)
        url = f"http://{host}:{port}"
        if url not in endpoints:
            endpoints.append(url)
    if not endpoints:
        raise ConfigurationError(SETTING, f"no etcd endpoint in {config!r}")
    return EtcdConfig(tuple(endpoints), root)


def _split_host_port(entry: str, config: str) -> tuple[str, int]:
    if entry.startswith("["):  # [::1]:2379
        host, _, tail = entry[1:].partition("]")
        host, port_text = f"[{host}]", tail.removeprefix(":")
    else:
        host, _, port_text = entry.partition(":")
    if not host or any(c in host for c in "/@ ") or host == "[]":
        raise ConfigurationError(SETTING, f"bad etcd endpoint {entry!r} in {config!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(SETTING, f"bad port in etcd endpoint {entry!r} in {config!r}")
    return host, int(port_text)


# -- keys and values -------------------------------------------------------------------------


def service_prefix(prefix: str, service: str) -> str:
    """The prefix under which every instance of ``service`` is registered."""
    return f"{prefix}{quote(service, safe='')}/"


def instance_key(prefix: str, service: str, instance: str) -> str:
    """The key of one registered instance."""
    return f"{service_prefix(prefix, service)}{quote(instance, safe='')}"


def parse_key(prefix: str, key: str) -> tuple[str, str] | None:
    """``(service, instance)`` of an instance key under ``prefix``; ``None`` for other keys."""
    if not key.startswith(prefix):
        return None
    service, sep, instance = key[len(prefix):].partition("/")
    if not sep or not service or not instance or "/" in instance:
        return None
    return unquote(service), unquote(instance)


def encode_record(*, service: str, instance: str, url: str) -> bytes:
    """The value stored under an instance key (the URL is validated first)."""
    Endpoint(url)
    return orjson.dumps({"url": url, "service": service, "instance": instance})


def decode_record(value: bytes) -> Endpoint | None:
    """The endpoint a stored value advertises; ``None`` for a value that is not ours."""
    try:
        record = orjson.loads(value)
        return Endpoint(record["url"]) if isinstance(record, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError, ConfigurationError):
        return None


def b64(data: str | bytes) -> str:
    """Base64 text of ``data`` (UTF-8 for text), as the gateway wants keys and values."""
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    """Bytes of a gateway base64 field (an absent field is empty)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def prefix_range_end(prefix: str) -> str:
    """The ``range_end`` that makes a range or watch cover every key starting with ``prefix``:
    the prefix with its last byte incremented (trailing 0xff bytes dropped)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return b64(bytes(raw))
        raw.pop()
    return b64(b"\0")  # every key


# -- the table -------------------------------------------------------------------------------


class EndpointTable:
    """Every registered instance under ``prefix``, grouped by service.

    :meth:`reset` loads a range snapshot, :meth:`apply` a watch response; both return the names
    of the services whose endpoint list changed. ``revision`` is the store revision the table
    reflects: a watch resumed from ``revision + 1`` misses nothing and repeats nothing.
    Not thread-safe: one watching thread owns it.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.revision = 0
        self._instances: dict[str, dict[str, Endpoint]] = {}
        self._lists: dict[str, tuple[Endpoint, ...]] = {}

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        """``service``'s endpoints ordered by instance id, each URL once."""
        return self._lists.get(service, ())

    def services(self) -> list[str]:
        """Services with at least one registered instance, sorted."""
        return sorted(self._lists)

    def __len__(self) -> int:
        return sum(len(instances) for instances in self._instances.values())

    def reset(self, kvs: Iterable[Mapping[str, Any]], revision: int) -> set[str]:
        """Replace everything by a range response's ``kvs`` taken at ``revision``."""
        before = dict(self._lists)
        self._instances.clear()
        for kv in kvs:
            self._put(kv)
        self._lists = {s: self._listed(s) for s in self._instances if self._instances[s]}
        self.revision = revision
        services = before.keys() | self._lists.keys()
        return {s for s in services if before.get(s) != self._lists.get(s)}

    def apply(self, events: Iterable[Mapping[str, Any]]) -> set[str]:
        """Apply a watch response's ``events`` (PUT and DELETE, in revision order)."""
        touched: set[str] = set()
        floor = self.revision  # one transaction's events share a revision: compare to the start
        for event in events:
            kv = event.get("kv") or {}
            revision = int(kv.get("mod_revision") or 0)
            if revision and revision <= floor:
                continue  # already in the table (a resumed watch never sends these; be safe)
            service = self._delete(kv) if event.get("type") == "DELETE" else self._put(kv)
            if service is not None:
                touched.add(service)
            self.revision = max(self.revision, revision)
        changed = set()
        for service in touched:
            listed = self._listed(service)
            if listed != self._lists.get(service, ()):
                changed.add(service)
            if listed:
                self._lists[service] = listed
            else:
                self._lists.pop(service, None)
                self._instances.pop(service, None)
        return changed

    def _key(self, kv: Mapping[str, Any]) -> tuple[str, str] | None:
        try:
            key = unb64(kv.get("key", "")).decode()
        except UnicodeDecodeError:
            return None
        return parse_key(self.prefix, key)

    def _put(self, kv: Mapping[str, Any]) -> str | None:
        names = self._key(kv)
        if names is None:
            return None
        service, instance = names
        endpoint = decode_record(unb64(kv.get("value", "")))
        instances = self._instances.setdefault(service, {})
        if endpoint is None:  # not a record of ours: not an endpoint either
            instances.pop(instance, None)
        else:
            instances[instance] = endpoint
        return service

    def _delete(self, kv: Mapping[str, Any]) -> str | None:
        names = self._key(kv)
        if names is None:
            return None
        service, instance = names
        self._instances.get(service, {}).pop(instance, None)
        return service

    def _listed(self, service: str) -> tuple[Endpoint, ...]:
        instances = self._instances.get(service, {})
        seen: dict[str, Endpoint] = {}
        for instance in sorted(instances):
            endpoint = instances[instance]
            seen.setdefault(endpoint.url, endpoint)
        return tuple(seen.values())


def reconnect_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Full-jitter exponential backoff: ``jitter`` (uniform in [0, 1)) times
    ``min(cap, base * 2 ** (attempt - 1))``; 0 before the first failure."""
    return full_jitter(attempt, base=base, cap=cap, jitter=jitter, max_step=30)
