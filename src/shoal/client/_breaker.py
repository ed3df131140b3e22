"""Circuit breaker per upstream service (pure: no I/O, injected clock).

Follows Resilience4j's state machine::

    CLOSED --(window has >= minimum_calls and failure or slow-call rate >= threshold)--> OPEN
    OPEN --(wait_in_open elapsed, on the next acquire)--> HALF_OPEN
    HALF_OPEN --(all half_open_probes recorded, rates below thresholds)--> CLOSED
    HALF_OPEN --(all half_open_probes recorded, a rate at or above its threshold)--> OPEN

The window is the last ``window_size`` calls (``window="count"``) or the last ``window_size``
seconds in one-second buckets (``window="time"``). Each admitted call holds a *permit*: the
caller reports its outcome with :meth:`CircuitBreaker.record` or gives it back unrecorded with
:meth:`CircuitBreaker.release`. A permit taken before a transition is stale: its outcome is
ignored, so calls that were in flight when the breaker opened can neither close it nor count
as half-open probes. Hence half-open never has more than ``half_open_probes`` calls admitted.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shoal._errors import ConfigurationError
from shoal.client._balancer import Clock


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


#: Value of the ``shoal_client_breaker_state`` gauge for each state.
STATE_GAUGE = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerPolicy:
    """When the breaker of an upstream trips and how it recovers (rates in %, times in s)."""

    window: Literal["count", "time"] = "count"
    #: Calls (count window) or seconds (time window) the rates are computed over.
    window_size: int = 100
    minimum_calls: int = 20
    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration: float = 5.0
    wait_in_open: float = 10.0
    half_open_probes: int = 3

    def __post_init__(self) -> None:
        if self.window not in ("count", "time"):
            raise ConfigurationError(
                "breaker.window", f"must be 'count' or 'time', got {self.window!r}"
            )
        _positive_int("breaker.window_size", self.window_size)
        _positive_int("breaker.minimum_calls", self.minimum_calls)
        _positive_int("breaker.half_open_probes", self.half_open_probes)
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 100:
                raise ConfigurationError(f"breaker.{name}", f"must be within (0, 100], got {value}")
        for name in ("slow_call_duration", "wait_in_open"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigurationError(f"breaker.{name}", f"must be > 0 seconds, got {value}")


def _positive_int(setting: str, value: int) -> None:
    if value < 1:
        raise ConfigurationError(setting, f"must be >= 1, got {value}")


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """The breaker of ``upstream`` moved from ``from_state`` to ``to_state`` at ``at``."""

    upstream: str
    from_state: BreakerState
    to_state: BreakerState
    at: float
    #: Rates (%) and call count of the window or probes that decided it (0 when not a decision).
    failure_rate: float
    slow_call_rate: float
    calls: int


TransitionListener = Callable[[BreakerTransition], None]

_FAIL = 1
_SLOW = 2


class _CountWindow:
    """The outcomes of the last ``size`` calls, as a ring with running totals."""

    __slots__ = ("_pos", "_ring", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._pos = 0
        self.calls = self.failures = self.slow = 0

    def add(self, flags: int, now: float) -> None:
        ring = self._ring
        if self.calls == len(ring):
            old = ring[self._pos]
            self.failures -= old & _FAIL
            self.slow -= (old & _SLOW) >> 1
        else:
            self.calls += 1
        ring[self._pos] = flags
        self.failures += flags & _FAIL
        self.slow += (flags & _SLOW) >> 1
        self._pos = (self._pos + 1) % len(ring)

    def totals(self, now: float) -> tuple[int, int, int]:
        return self.calls, self.failures, self.slow


class _TimeWindow:
    """Outcomes of the last ``size`` seconds in one-second buckets."""

    __slots__ = ("_calls", "_epochs", "_failures", "_slow")

    def __init__(self, size: int) -> None:
        self._epochs = [-1] * size
        self._calls = [0] * size
        self._failures = [0] * size
        self._slow = [0] * size

    def add(self, flags: int, now: float) -> None:
        epoch = math.floor(now)
        i = epoch % len(self._epochs)
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            self._calls[i] = self._failures[i] = self._slow[i] = 0
        self._calls[i] += 1
        self._failures[i] += flags & _FAIL
        self._slow[i] += (flags & _SLOW) >> 1

    def totals(self, now: float) -> tuple[int, int, int]:
        oldest = math.floor(now) - len(self._epochs)
        calls = failures = slow = 0
        for i, epoch in enumerate(self._epochs):
            if epoch > oldest:
                calls += self._calls[i]
                failures += self._failures[i]
                slow += self._slow[i]
        return calls, failures, slow


class CircuitBreaker:
    """The breaker of one upstream service. Not thread-safe: the sync client locks around it."""

    __slots__ = (
        "_clock",
        "_generation",
        "_listener",
        "_open_until",
        "_probe_failures",
        "_probe_slow",
        "_probes_admitted",
        "_probes_done",
        "_window",
        "policy",
        "state",
        "upstream",
    )

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        clock: Clock,
        upstream: str = "",
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.policy = policy
        self.upstream = upstream
        self._clock = clock
        self._listener = on_transition
        self.state = BreakerState.CLOSED
        self._generation = 0
        self._open_until = 0.0
        self._probes_admitted = self._probes_done = 0
        self._probe_failures = self._probe_slow = 0
        self._window: _CountWindow | _TimeWindow = self._new_window()

    def _new_window(self) -> _CountWindow | _TimeWindow:
        if self.policy.window == "time":
            return _TimeWindow(self.policy.window_size)
        return _CountWindow(self.policy.window_size)

    def try_acquire(self) -> int | None:
        """A permit for one call, or ``None`` when the breaker rejects it (open, or half-open
        with every probe already admitted)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return self._generation
        if state is BreakerState.OPEN:
            now = self._clock()
            if now < self._open_until:
                return None
            self._transition(BreakerState.HALF_OPEN, now, 0.0, 0.0, 0)
        if self._probes_admitted >= self.policy.half_open_probes:
            return None
        self._probes_admitted += 1
        return self._generation

    def retry_after(self) -> float:
        """Seconds until an open breaker admits a probe (0.0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def release(self, permit: int) -> None:
        """Give back a permit whose call has no outcome to record (cancelled, or not the
        upstream's fault)."""
        if permit == self._generation and self.state is BreakerState.HALF_OPEN:
            self._probes_admitted -= 1

    def record(self, permit: int, *, failure: bool, duration: float) -> None:
        """Record the outcome of the call holding ``permit``; may change the state."""
        if permit != self._generation:
            return
        slow = duration >= self.policy.slow_call_duration
        if self.state is BreakerState.CLOSED:
            now = self._clock()
            window = self._window
            window.add(_FAIL * failure | _SLOW * slow, now)
            calls, failures, slow_calls = window.totals(now)
            if calls < self.policy.minimum_calls or not (failures or slow_calls):
                return  # (with no failure and no slow call no threshold (> 0) can be reached)
            self._decide(calls, failures, slow_calls, now, close_if_healthy=False)
        elif self.state is BreakerState.HALF_OPEN:
            self._probes_done += 1
            self._probe_failures += failure
            self._probe_slow += slow
            if self._probes_done >= self.policy.half_open_probes:
                self._decide(
                    self._probes_done,
                    self._probe_failures,
                    self._probe_slow,
                    self._clock(),
                    close_if_healthy=True,
                )

    def _decide(
        self, calls: int, failures: int, slow: int, now: float, *, close_if_healthy: bool
    ) -> None:
        failure_rate = 100.0 * failures / calls
        slow_rate = 100.0 * slow / calls
        policy = self.policy
        if (
            failure_rate >= policy.failure_rate_threshold
            or slow_rate >= policy.slow_call_rate_threshold
        ):
            self._transition(BreakerState.OPEN, now, failure_rate, slow_rate, calls)
        elif close_if_healthy:
            self._transition(BreakerState.CLOSED, now, failure_rate, slow_rate, calls)

    def _transition(
        self, to: BreakerState, now: float, failure_rate: float, slow_rate: float, calls: int
    ) -> None:
        previous = self.state
        self.state = to
        self._generation += 1
        self._probes_admitted = self._probes_done = 0
        self._probe_failures = self._probe_slow = 0
        if to is BreakerState.OPEN:
            self._open_until = now + self.policy.wait_in_open
        elif to is BreakerState.CLOSED:
            self._window = self._new_window()
        if self._listener is not None:
            self._listener(
                BreakerTransition(
                    self.upstream, previous, to, now, failure_rate, slow_rate, calls
                )
            )
