"""Self-registration of a served instance in the discovery backend, when it has one (etcd).

``shoal serve`` calls :func:`start_registration` once the server is listening (uvicorn after
startup, gunicorn in the worker). With ``SHOAL_DISCOVERY=etcd+http://...`` every chassis of the
process registers ``SHOAL_ADVERTISE_URL`` (default ``http://{SHOAL_HOST}:{PORT}``) once its own
``/readyz`` answers 200, and leaves first thing when the drain starts (a
:meth:`Chassis.on_drain` hook). Other backends have nothing to register: static is fixed,
``local`` is health-gated by the platform's supervisor, DNS belongs to Kubernetes.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

from shoal._chassis import instances
from shoal._logging import get_logger
from shoal._settings import Settings
from shoal.discovery._config import scheme_of
from shoal.discovery._etcd_registration import EtcdRegistration
from shoal.discovery._etcd_table import parse_etcd

_log = get_logger("shoal.registration")
_UNSPECIFIED = frozenset({"", "0.0.0.0", "::"})


def _url_host(host: str) -> str:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    return host


def advertise_url(settings: Settings, port: int) -> str:
    """The URL other instances should call this one at."""
    if settings.advertise_url:
        return settings.advertise_url.rstrip("/")
    host = settings.host
    if host in _UNSPECIFIED:  # bound to every interface: the host's name is the best guess
        host = socket.gethostname()
    return f"http://{_url_host(host)}:{port}"


def readiness_probe(settings: Settings, port: int) -> Callable[[], bool]:
    """``probe()``: whether this process's own ``GET /readyz`` answers 200 right now.

    Asked over HTTP like Kubernetes does, so it covers every check (async ones run on the
    server's own loop), the drain state and the server actually accepting connections.
    """
    host = settings.host
    if host in _UNSPECIFIED:
        host = "::1" if host == "::" else "127.0.0.1"
    timeout = settings.readiness_timeout + 1.0

    def probe() -> bool:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return probe


def bound_port(sockets: Iterable[Any], default: int) -> int:
    """The TCP port the server listens on (its first inet socket), else ``default``."""
    for sock in sockets:
        with contextlib.suppress(OSError, AttributeError):
            name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                return int(name[1])
    return default


class Registrar:
    """The registrations of one served process (one per chassis, usually exactly one)."""

    def __init__(self, registrations: list[EtcdRegistration]) -> None:
        self.registrations = registrations

    def close(self) -> None:
        """Deregister (if the drain has not already) and stop renewing."""
        for registration in self.registrations:
            registration.close()


def start_registration(settings: Settings, *, port: int) -> Registrar | None:
    """Register this process's chassis in etcd when ``SHOAL_DISCOVERY`` selects etcd.

    Returns ``None`` (and does nothing) for other backends, or when no chassis exists (an
    uninstrumented app has no ``/readyz`` to gate on). Never blocks on etcd: registration,
    renewal and re-registration happen on a daemon thread per chassis. Raises
    :class:`~shoal.ConfigurationError` for a malformed ``SHOAL_DISCOVERY``.
    """
    if not settings.discovery or scheme_of(settings.discovery) != "etcd":
        return None
    config = parse_etcd(settings.discovery)
    chassis_by_identity = {(c.service, c.instance): c for c in instances()}
    if not chassis_by_identity:
        _log.warning("registration.skipped", reason="no instrumented app in this process")
        return None
    url = advertise_url(settings, port)
    probe = readiness_probe(settings, port)
    registrations = []
    for (service, instance), chassis in chassis_by_identity.items():
        registration = EtcdRegistration(
            config, service=service, instance=instance, url=url,
            ttl=settings.registration_ttl, ready=probe,
        )
        chassis.on_drain(registration.deregister)
        registrations.append(registration.start())
    return Registrar(registrations)
