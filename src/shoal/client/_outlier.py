"""Outlier detection: eject one bad instance of a service for a while (pure, injected clock).

Modelled on Envoy's consecutive-5xx / consecutive-gateway-failure detection:

* ``consecutive_failures`` connect failures or 5xx answers in a row eject an instance;
* it stays out for ``base_ejection_time x multiplier`` (capped at ``max_ejection_time``); the
  multiplier grows by one with each ejection and decays by one for every ``base_ejection_time``
  the instance then stays in;
* at most ``max_ejection_percent`` % of the instances (rounded down) are ejected at once, so
  a single-instance service is never ejected (its breaker protects it instead);
* a success from an ejected instance (an attempt sent before the ejection) returns it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shoal._errors import ConfigurationError
from shoal.client._balancer import Clock, Instance, InstanceTable


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierPolicy:
    """When an instance is ejected and for how long (durations in seconds)."""

    consecutive_failures: int = 5
    base_ejection_time: float = 10.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ConfigurationError(
                "outlier.consecutive_failures", f"must be >= 1, got {self.consecutive_failures}"
            )
        if not self.base_ejection_time > 0:
            raise ConfigurationError(
                "outlier.base_ejection_time", f"must be > 0, got {self.base_ejection_time}"
            )
        if not self.max_ejection_time >= self.base_ejection_time:
            raise ConfigurationError(
                "outlier.max_ejection_time",
                f"must be >= base_ejection_time ({self.base_ejection_time}), "
                f"got {self.max_ejection_time}",
            )
        if not 0 <= self.max_ejection_percent <= 100:
            raise ConfigurationError(
                "outlier.max_ejection_percent",
                f"must be within 0..100, got {self.max_ejection_percent}",
            )

    def max_ejected(self, instances: int) -> int:
        """How many of ``instances`` may be ejected at once."""
        return math.floor(instances * self.max_ejection_percent / 100 + 1e-9)


@dataclass(frozen=True, slots=True)
class EjectionEvent:
    """An instance left (``ejected``) or rejoined (not ``ejected``) the healthy set."""

    instance: str
    ejected: bool
    at: float
    #: How long the ejection lasts (0.0 for a return).
    duration: float
    #: The instance's ejection multiplier after this event.
    ejections: int


class OutlierDetector:
    """Applies an :class:`OutlierPolicy` to the instances of one :class:`InstanceTable`."""

    __slots__ = ("_clock", "policy", "table")

    def __init__(self, table: InstanceTable, policy: OutlierPolicy, *, clock: Clock) -> None:
        self.table = table
        self.policy = policy
        self._clock = clock

    def record_success(self, inst: Instance) -> EjectionEvent | None:
        """A successful attempt: resets the failure streak and returns an ejected instance."""
        inst.consecutive_failures = 0
        now = self._clock()
        if not inst.is_ejected(now):
            return None
        inst.ejected_until = now
        inst.returned_at = now
        self.table.touch()
        return EjectionEvent(inst.url, False, now, 0.0, inst.ejections)

    def record_failure(self, inst: Instance) -> EjectionEvent | None:
        """A connect failure or 5xx: ejects the instance when its streak reaches the threshold
        and the ejection cap allows; returns the ejection, if any."""
        inst.consecutive_failures += 1
        policy = self.policy
        if inst.consecutive_failures < policy.consecutive_failures:
            return None
        now = self._clock()
        if inst.is_ejected(now) or inst not in self.table.instances:
            return None
        limit = policy.max_ejected(len(self.table.instances))
        if self.table.ejected_count(now) >= limit:
            return None
        base = policy.base_ejection_time
        if inst.ejections:
            # Healthy time since the last return pays off the multiplier.
            healthy_for = now - max(inst.returned_at, inst.ejected_until)
            inst.ejections = max(0, inst.ejections - int(healthy_for / base))
        inst.ejections += 1
        duration = min(base * inst.ejections, policy.max_ejection_time)
        inst.ejected_until = now + duration
        inst.consecutive_failures = 0
        self.table.touch()
        return EjectionEvent(inst.url, True, now, duration, inst.ejections)

    def enforce_limit(self) -> list[EjectionEvent]:
        """After membership shrank: return the soonest-expiring ejected instances until the
        ejection cap holds again."""
        now = self._clock()
        ejected = sorted(
            (inst for inst in self.table.instances if inst.is_ejected(now)),
            key=lambda inst: inst.ejected_until,
        )
        excess = len(ejected) - self.policy.max_ejected(len(self.table.instances))
        events = []
        for inst in ejected[: max(0, excess)]:
            inst.ejected_until = now
            inst.returned_at = now
            events.append(EjectionEvent(inst.url, False, now, 0.0, inst.ejections))
        if events:
            self.table.touch()
        return events
