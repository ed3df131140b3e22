"""What may be retried, when, and how many retries a client may spend (pure, injected clock).

:class:`RetryPolicy` decides per attempt: a request is retryable when its method is idempotent
or it carries an ``Idempotency-Key`` (a failed *connect* is retryable for any method, since
nothing reached the service - Finagle's "retryable write" rule). Retried outcomes: connect
failures, connection resets before a response, 502/503/504, and 429 honouring ``Retry-After``;
never any other 4xx, never a read timeout (the service may still be working on it). Backoff is
exponential with full jitter.

:class:`RetryBudget` caps retries per client, as Finagle's ``RetryBudget``: every call deposits
``percent_can_retry`` % of a retry, every retry withdraws one, and deposits and withdrawals
expire after ``ttl`` seconds; a reserve of ``min_retries_per_second x ttl`` retries lets a
quiet client retry at all. So during an outage retries add at most ~20 % load, not xattempts.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass, field

from shoal._backoff import full_jitter
from shoal._errors import ConfigurationError
from shoal.client._balancer import Clock

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
IDEMPOTENCY_KEY = "idempotency-key"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Which attempts are retried and the backoff between them (seconds)."""

    #: Attempts per call, the first included (1 disables retries).
    max_attempts: int = 3
    backoff_initial: float = 0.02
    backoff_max: float = 1.0
    retry_on_status: frozenset[int] = field(default=frozenset({429, 502, 503, 504}))
    #: A ``Retry-After`` longer than this is not waited for: the call fails instead.
    max_retry_after: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(
                "retry.max_attempts", f"must be >= 1, got {self.max_attempts}"
            )
        if not self.backoff_initial > 0:
            raise ConfigurationError(
                "retry.backoff_initial", f"must be > 0 seconds, got {self.backoff_initial}"
            )
        if not self.backoff_max >= self.backoff_initial:
            raise ConfigurationError(
                "retry.backoff_max",
                f"must be >= backoff_initial ({self.backoff_initial}), got {self.backoff_max}",
            )
        bad = sorted(s for s in self.retry_on_status if not (s == 429 or 500 <= s <= 599))
        if bad:
            raise ConfigurationError(
                "retry.retry_on_status", f"only 429 and 5xx may be retried, got {bad}"
            )
        if self.max_retry_after < 0:
            raise ConfigurationError(
                "retry.max_retry_after", f"must be >= 0 seconds, got {self.max_retry_after}"
            )

    def backoff(self, retry: int, jitter: float) -> float:
        """Delay before retry number ``retry`` (1 for the first), given ``jitter`` in [0, 1):
        uniform over ``[0, min(backoff_max, backoff_initial x 2^(retry-1)))`` (full jitter)."""
        return full_jitter(retry, base=self.backoff_initial, cap=self.backoff_max, jitter=jitter)


def is_idempotent(method: str, has_idempotency_key: bool) -> bool:
    """Whether a request may be sent twice: idempotent method or an ``Idempotency-Key``."""
    return has_idempotency_key or method in IDEMPOTENT_METHODS


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); ``None`` when
    absent or malformed. ``now_wall`` is the current ``time.time()``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now_wall)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetPolicy:
    """A client may retry ``percent_can_retry`` % of its calls plus ``min_retries_per_second``,
    both measured over ``ttl`` seconds."""

    percent_can_retry: float = 20.0
    min_retries_per_second: float = 10.0
    ttl: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= self.percent_can_retry <= 1000:
            raise ConfigurationError(
                "retry_budget.percent_can_retry",
                f"must be within 0..1000, got {self.percent_can_retry}",
            )
        if self.min_retries_per_second < 0:
            raise ConfigurationError(
                "retry_budget.min_retries_per_second",
                f"must be >= 0, got {self.min_retries_per_second}",
            )
        if not 1.0 <= self.ttl <= 60.0:
            raise ConfigurationError(
                "retry_budget.ttl", f"must be within 1..60 seconds, got {self.ttl}"
            )


#: Budget arithmetic is in integer thousandths of a retry, so no float drift can mint retries.
_SCALE = 1000
_BUCKETS = 10


class RetryBudget:
    """Token budget with expiring deposits (not thread-safe: the sync client locks around it).

    Guarantee: when a withdrawal is granted at time ``t``, the retries granted within the
    counted window - the current bucket and the ``9`` before it, i.e. at least the last
    ``ttl x 0.9`` seconds and at most the last ``ttl`` - are at most
    ``min_retries_per_second x ttl + percent_can_retry / 100 x (calls deposited in it)``.
    """

    __slots__ = ("_clock", "_deposit", "_epochs", "_net", "_reserve", "_width", "policy")

    def __init__(self, policy: RetryBudgetPolicy, *, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._width = policy.ttl / _BUCKETS
        self._deposit = round(policy.percent_can_retry * _SCALE / 100)
        self._reserve = math.floor(policy.min_retries_per_second * policy.ttl) * _SCALE
        self._epochs = [-1] * _BUCKETS
        self._net = [0] * _BUCKETS

    def _bucket(self, now: float) -> int:
        epoch = int(now // self._width)
        i = epoch % _BUCKETS
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            self._net[i] = 0
        return i

    def deposit(self) -> None:
        """Credit one call."""
        self._net[self._bucket(self._clock())] += self._deposit

    def balance(self) -> float:
        """Retries available right now."""
        return self._balance(self._clock()) / _SCALE

    def _balance(self, now: float) -> int:
        current = int(now // self._width)
        total = self._reserve
        for i in range(_BUCKETS):
            if current - self._epochs[i] < _BUCKETS:
                total += self._net[i]
        return total

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget has one; ``False`` (nothing spent) otherwise."""
        now = self._clock()
        if self._balance(now) < _SCALE:
            return False
        self._net[self._bucket(now)] -= _SCALE
        return True
