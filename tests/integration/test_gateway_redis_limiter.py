"""The shared rate limiter against the real Redis on 127.0.0.1:6379 (two "replicas")."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from shoal.platform.gateway import RedisRateLimiter

pytestmark = pytest.mark.integration
URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


if not _redis_up():
    if os.environ.get("SHOAL_REQUIRE_EXTERNAL") == "1":
        pytest.fail("Redis is required (SHOAL_REQUIRE_EXTERNAL=1) but 127.0.0.1:6379 is down",
                    pytrace=False)
    pytest.skip("no Redis on 127.0.0.1:6379", allow_module_level=True)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    unique = f"shoal-test:{uuid.uuid4().hex}:"
    yield unique
    client = redis.Redis.from_url(URL)
    try:
        keys = [k async for k in client.scan_iter(match=unique + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_replicas_share_one_bucket_per_client(prefix: str) -> None:
    a = RedisRateLimiter(url=URL, rate=0.5, burst=4, prefix=prefix)
    b = RedisRateLimiter(url=URL, rate=0.5, burst=4, prefix=prefix)
    try:
        waits = [await (a if i % 2 else b).acquire("198.51.100.7") for i in range(6)]
        assert waits[:4] == [0.0] * 4
        assert 0 < waits[4] <= 2.0
        assert 0 < waits[5] <= 2.0
        assert await a.acquire("198.51.100.8") == 0.0  # another client has its own bucket
    finally:
        await a.aclose()
        await b.aclose()


async def test_idle_buckets_expire(prefix: str) -> None:
    limiter = RedisRateLimiter(url=URL, rate=10, burst=2, prefix=prefix)
    client = redis.Redis.from_url(URL)
    try:
        await limiter.acquire("c")
        ttl = await client.pttl(prefix + "c")
        assert 0 < ttl <= 1200
    finally:
        await limiter.aclose()
        await client.aclose()


async def test_unreachable_redis_admits_requests() -> None:
    port = 1
    limiter = RedisRateLimiter(url=f"redis://127.0.0.1:{port}/0", rate=1, burst=1)
    try:
        assert await limiter.acquire("c") == 0.0
        assert await limiter.acquire("c") == 0.0
    finally:
        await limiter.aclose()
