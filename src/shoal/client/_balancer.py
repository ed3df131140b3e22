"""Load balancing over the instances of one upstream service (pure: no I/O, injected clock).

An :class:`InstanceTable` holds the live :class:`Instance` objects of a service; discovery
updates replace its membership (instances that stay keep their state) and outlier detection
ejects and returns instances. A balancer picks one instance per attempt:

* :class:`LeastOutstandingBalancer` (the default) - power of two choices: two distinct random
  healthy instances, the one with fewer outstanding requests wins; on a tie, a clearly slower
  one (latency EWMA over twice the other's) loses, so a slow instance sheds traffic even at low
  concurrency. Only a recent average counts (:data:`LATENCY_STALE_AFTER`): an instance that
  lost every tie gets traffic again once its average is stale, and its next sample starts the
  average anew, so an instance that was slow once is never starved.
* :class:`RoundRobinBalancer` - the healthy instances in turn.

Both guarantee: an ejected instance is never picked while a healthy one exists, and an
instance listed in ``tried`` (earlier attempts of the same call) is avoided while another
healthy one exists.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Protocol

Clock = Callable[[], float]

#: Weight of a new latency sample in the per-instance moving average.
_EWMA_ALPHA = 0.3
_INF = float("inf")
#: An instance whose latency average is this many times another's counts as slower.
_SLOWER = 2.0
#: Seconds after its last sample when an instance's latency average stops counting. Without
#: it, an instance that lost the tie-break would get no traffic at low concurrency, so no new
#: sample, and stay "slower" for ever (and, behind a gateway, its own breakers and caches would
#: see no request to recover with).
LATENCY_STALE_AFTER = 1.0


class Instance:
    """Mutable per-instance state shared by the balancer and outlier detection."""

    __slots__ = (
        "consecutive_failures",
        "ejected_until",
        "ejections",
        "ewma",
        "outstanding",
        "returned_at",
        "sampled_at",
        "url",
    )

    def __init__(self, url: str) -> None:
        self.url = url
        #: Attempts sent to this instance and not yet finished.
        self.outstanding = 0
        #: Moving average of attempt latency, seconds (0.0 until the first sample).
        self.ewma = 0.0
        #: Clock reading of the last latency sample.
        self.sampled_at = -_INF
        self.consecutive_failures = 0
        #: Ejected while ``now < ejected_until``.
        self.ejected_until = -_INF
        #: Ejection multiplier: grows with each ejection, decays while the instance is healthy.
        self.ejections = 0
        #: When the instance last came back from an ejection.
        self.returned_at = -_INF

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def observe_latency(self, seconds: float, now: float) -> None:
        """Add an attempt's latency taken at ``now``; a stale average restarts from it."""
        if now - self.sampled_at > LATENCY_STALE_AFTER:
            self.ewma = seconds
        else:
            self.ewma += _EWMA_ALPHA * (seconds - self.ewma)
        self.sampled_at = now

    def latency_is_recent(self, now: float) -> bool:
        """Whether the latency average still speaks for the instance."""
        return now - self.sampled_at <= LATENCY_STALE_AFTER

    def __repr__(self) -> str:
        return f"Instance({self.url!r}, outstanding={self.outstanding})"


class InstanceTable:
    """The instances of one upstream service; ``version`` changes whenever health may have."""

    __slots__ = ("_by_url", "instances", "version")

    def __init__(self, urls: Iterable[str] = ()) -> None:
        self.instances: tuple[Instance, ...] = ()
        self._by_url: dict[str, Instance] = {}
        self.version = 0
        self.update(urls)

    def update(self, urls: Iterable[str]) -> None:
        """Replace membership with ``urls``; instances that remain keep their state."""
        by_url: dict[str, Instance] = {}
        for url in urls:
            clean = url.rstrip("/")
            if clean not in by_url:
                by_url[clean] = self._by_url.get(clean) or Instance(clean)
        self._by_url = by_url
        self.instances = tuple(by_url.values())
        self.version += 1

    def get(self, url: str) -> Instance | None:
        return self._by_url.get(url)

    def touch(self) -> None:
        """Record that an instance's ejection state changed."""
        self.version += 1

    def ejected_count(self, now: float) -> int:
        return sum(1 for inst in self.instances if inst.is_ejected(now))


class Balancer(Protocol):
    """Picks the instance of an attempt; ``None`` when the service has no healthy instance."""

    table: InstanceTable

    def pick(self, tried: Sequence[Instance] = ()) -> Instance | None: ...


class _HealthyCache:
    """The healthy instances, recomputed only when the table or an ejection deadline changes."""

    __slots__ = ("_clock", "_healthy", "_next_expiry", "_version", "table")

    def __init__(self, table: InstanceTable, clock: Clock) -> None:
        self.table = table
        self._clock = clock
        self._version = -1
        self._next_expiry = _INF
        self._healthy: tuple[Instance, ...] = ()

    def healthy(self, tried: Sequence[Instance]) -> tuple[Instance, ...]:
        now = self._clock()
        if self._version != self.table.version or now >= self._next_expiry:
            self._refresh(now)
        healthy = self._healthy
        if tried:
            untried = tuple(inst for inst in healthy if inst not in tried)
            if untried:
                return untried
        return healthy

    def _refresh(self, now: float) -> None:
        healthy = []
        next_expiry = _INF
        for inst in self.table.instances:
            if inst.is_ejected(now):
                next_expiry = min(next_expiry, inst.ejected_until)
            else:
                healthy.append(inst)
        self._healthy = tuple(healthy)
        self._next_expiry = next_expiry
        self._version = self.table.version


class LeastOutstandingBalancer(_HealthyCache):
    """Power of two choices, least outstanding requests, latency as the tie-break."""

    __slots__ = ("_random",)

    def __init__(
        self, table: InstanceTable, *, clock: Clock, rng: random.Random | None = None
    ) -> None:
        super().__init__(table, clock)
        self._random = (rng or random.Random()).random  # noqa: S311 - not cryptographic

    def pick(self, tried: Sequence[Instance] = ()) -> Instance | None:
        """Two distinct random healthy candidates; the less loaded one (``None`` if none)."""
        candidates = self.healthy(tried)
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        rand = self._random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
        if a.outstanding != b.outstanding:
            return a if a.outstanding < b.outstanding else b
        # Equal load: only a clearly slower instance loses (noise must not concentrate load),
        # and only while that is recent (the clock is read on this rare path alone).
        if a.ewma > _SLOWER * b.ewma and a.latency_is_recent(self._clock()):
            return b
        return a


class RoundRobinBalancer(_HealthyCache):
    """The healthy instances in turn."""

    __slots__ = ("_next",)

    def __init__(self, table: InstanceTable, *, clock: Clock) -> None:
        super().__init__(table, clock)
        self._next = 0

    def pick(self, tried: Sequence[Instance] = ()) -> Instance | None:
        """The next healthy instance in turn (``None`` if none)."""
        candidates = self.healthy(tried)
        if not candidates:
            return None
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]


BalancerName = Literal["least_outstanding", "round_robin"]


def make_balancer(
    name: BalancerName, table: InstanceTable, *, clock: Clock, rng: random.Random | None = None
) -> Balancer:
    """The balancer called ``name`` over ``table``."""
    if name == "round_robin":
        return RoundRobinBalancer(table, clock=clock)
    return LeastOutstandingBalancer(table, clock=clock, rng=rng)
