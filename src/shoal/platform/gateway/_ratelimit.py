"""Per-client rate limiting: a token bucket per client, in process or shared through Redis.

Each client (keyed by its address) may make ``rate`` requests per second on average, with
bursts of up to ``burst``. :meth:`acquire` answers how long to wait before a request would be
admitted: ``0.0`` admits it now (the token is taken), anything else is the 429's
``Retry-After``.
"""

from __future__ import annotations

import time
from typing import Protocol

from shoal._logging import get_logger
from shoal.client._balancer import Clock

_log = get_logger("shoal.gateway")


class RateLimiter(Protocol):
    async def acquire(self, key: str) -> float:
        """Take a token for ``key``: ``0.0`` when admitted, else seconds until one is due."""
        ...

    async def aclose(self) -> None: ...


class TokenBuckets:
    """Token buckets keyed by client, on an injected clock (pure: no I/O).

    At most ``max_keys`` buckets are kept: past that, buckets that have refilled completely
    (indistinguishable from a new client's) are forgotten, so memory stays bounded under
    many distinct clients.
    """

    def __init__(
        self, *, rate: float, burst: int, clock: Clock = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        # key -> [tokens, last refill time]
        self._buckets: dict[str, list[float]] = {}

    def take(self, key: str) -> float:
        """Take one token from ``key``'s bucket; see :meth:`RateLimiter.acquire`."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_full(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [k for k, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:  # all busy: drop the oldest half
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k][1])
            for key in oldest[: len(oldest) // 2]:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class LocalRateLimiter:
    """:class:`TokenBuckets` in this process: exact for one gateway replica."""

    def __init__(self, *, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.buckets = TokenBuckets(rate=rate, burst=burst, clock=clock)

    async def acquire(self, key: str) -> float:
        return self.buckets.take(key)

    async def aclose(self) -> None:
        pass


# Atomic in Redis: refill by elapsed time (Redis' own clock, shared by every replica), take
# a token or answer the wait, and let an idle bucket expire once it would be full anyway.
_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every gateway replica using the same ``url`` and
    ``prefix``: one atomic Lua script per request (one round trip).

    When Redis cannot be reached the request is admitted (fail open: the limiter protects
    the services, it must not take the front door down) and a warning is logged, at most
    every 10 s.
    """

    def __init__(
        self, *, url: str, rate: float, burst: int, prefix: str = "shoal:gateway:rl:",
        timeout: float = 0.25,
    ) -> None:
        import redis.asyncio as redis  # noqa: PLC0415 - optional extra, only when configured

        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self._redis.register_script(_BUCKET_SCRIPT)
        self._args = (repr(rate), str(burst))
        self.prefix = prefix
        self._warned_at = -1e9
        self._errors = (redis.RedisError, OSError, TimeoutError)

    async def acquire(self, key: str) -> float:
        try:
            wait = await self._script(keys=[self.prefix + key], args=self._args)
        except self._errors as exc:
            now = time.monotonic()
            if now - self._warned_at > 10.0:
                self._warned_at = now
                _log.warning("gateway.rate_limiter_unavailable", error=repr(exc))
            return 0.0
        return float(wait)

    async def aclose(self) -> None:
        await self._redis.aclose()
