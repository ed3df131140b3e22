"""The discovery seam: a :class:`Resolver` pushes each service's live endpoint table.

A client subscribes once per service and keeps the table in memory; a request never waits on
discovery. Backends (static configuration now; the control-plane registry, etcd and Kubernetes
DNS later) implement the same protocol and are chosen by ``SHOAL_DISCOVERY``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from shoal._errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service, reachable at ``url`` (``scheme://host:port``, no path)."""

    url: str

    def __post_init__(self) -> None:
        scheme, sep, rest = self.url.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest.rstrip("/"):
            raise ConfigurationError(
                "endpoint", f"expected http(s)://host:port, got {self.url!r}"
            )


#: Called with the complete current endpoint list of a service, immediately on subscription
#: (on the subscribing thread) and again after every change (on the resolver's own thread).
#: Must be cheap, must not block, and must be safe on any thread: Shoal's clients only store
#: the list there and apply it on their own loop or under their own lock (docs/discovery.md).
EndpointListener = Callable[[Sequence[Endpoint]], None]


class Subscription(Protocol):
    """Handle of a :meth:`Resolver.subscribe` call."""

    def cancel(self) -> None:
        """Stop delivering updates (idempotent)."""


class Resolver(Protocol):
    """A discovery backend: pushes each service's endpoint table to its subscribers."""

    def subscribe(self, service: str, listener: EndpointListener) -> Subscription:
        """Deliver ``service``'s endpoints to ``listener`` now (possibly an empty list, if the
        service is unknown yet) and after every change, until the subscription is cancelled.
        Never blocks on the network: watching backends deliver from their own task/thread."""
        ...

    def close(self) -> None:
        """Stop watching and release resources (idempotent)."""
        ...
