"""Bulkhead: a cap on concurrent calls to one upstream service (pure accounting).

Excess calls fail fast instead of queueing, so one slow dependency cannot absorb every worker
or connection of the caller. Not thread-safe: the sync client locks around it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal._errors import ConfigurationError


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadPolicy:
    """At most ``max_concurrent`` calls in flight per upstream service."""

    max_concurrent: int = 256

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ConfigurationError(
                "bulkhead.max_concurrent", f"must be >= 1, got {self.max_concurrent}"
            )


class Bulkhead:
    """Counts calls in flight; admits one only below the limit."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, policy: BulkheadPolicy) -> None:
        self.limit = policy.max_concurrent
        self.in_flight = 0

    def try_acquire(self) -> bool:
        """Admit a call (``True``) or refuse it without side effects (``False``)."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        """A call admitted by :meth:`try_acquire` finished (exactly once per admission)."""
        if self.in_flight <= 0:
            raise RuntimeError("Bulkhead.release() without a matching try_acquire()")
        self.in_flight -= 1
