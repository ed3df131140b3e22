"""Chassis settings read from the environment (pydantic-settings).

A wrong value fails at start with :class:`~shoal.ConfigurationError` naming the variable.
"""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shoal._errors import ConfigurationError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    """What a Shoal service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SHOAL_", extra="ignore", frozen=True)

    service: str | None = Field(default=None, min_length=1, max_length=63)
    """``SHOAL_SERVICE``: the logical service name (else given to ``instrument``)."""
    instance: str = Field(default_factory=_default_instance, min_length=1)
    """``SHOAL_INSTANCE``: this replica's id (default: host-pid)."""
    host: str = "127.0.0.1"
    """``SHOAL_HOST``: address to bind (loopback by default)."""
    port: int = Field(default=8000, ge=0, le=65535, validation_alias=AliasChoices("PORT",
                                                                                   "SHOAL_PORT"))
    """``PORT`` (or ``SHOAL_PORT``): port to bind; 0 picks a free one."""
    log_level: LogLevel = "INFO"
    """``SHOAL_LOG_LEVEL``."""
    drain_grace: float = Field(default=10.0, ge=0, le=3600)
    """``SHOAL_DRAIN_GRACE``: seconds in-flight requests get to finish after SIGTERM."""
    drain_delay: float = Field(default=0.0, ge=0, le=600)
    """``SHOAL_DRAIN_DELAY``: seconds to keep serving (readiness failing) before draining,
    so load balancers notice the instance is leaving."""
    discovery: str | None = None
    """``SHOAL_DISCOVERY``: discovery backend for the client, e.g. ``static:users=http://...``."""
    readiness_timeout: float = Field(default=2.0, gt=0, le=60)
    """``SHOAL_READINESS_TIMEOUT``: seconds each readiness check may take."""
    advertise_url: str | None = Field(default=None, pattern=r"^https?://[^/\s]+/?$")
    """``SHOAL_ADVERTISE_URL``: the URL this instance registers in discovery (etcd), e.g.
    ``http://10.0.0.7:8001``; default ``http://{SHOAL_HOST}:{PORT}``."""
    registration_ttl: int = Field(default=10, ge=1, le=3600)
    """``SHOAL_REGISTRATION_TTL``: seconds a registration outlives its last keep-alive (the
    etcd lease TTL); renewed every third of it."""

    @classmethod
    def from_env(cls) -> Settings:
        """Read the environment; raise :class:`ConfigurationError` naming the bad variable."""
        try:
            return cls()
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = str(first["loc"][0]) if first["loc"] else "?"
            # Aliased fields report the alias (``PORT``); the others their field name.
            var = loc if loc.isupper() else f"SHOAL_{loc.upper()}"
            raise ConfigurationError(
                var, f"{first['msg']} (got {os.environ.get(var, first.get('input'))!r})"
            ) from None
