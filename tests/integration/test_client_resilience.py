"""The resilient client against real server processes on 127.0.0.1.

Backends are ``tests.apps.backend`` / ``tests.apps.relay`` run by ``shoal serve`` (uvicorn) in
their own processes, started in parallel, polled for readiness and always stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from shoal._errors import CircuitOpenError, UpstreamError
from shoal._metrics import REGISTRY
from shoal.client import (
    AsyncClient,
    BreakerPolicy,
    BreakerState,
    Client,
    RetryPolicy,
)
from shoal.discovery import StaticResolver
from shoal.testing import ServerProcess, free_port

pytestmark = pytest.mark.integration

BACKEND = "tests.apps.backend:app"
RELAY = "tests.apps.relay:app"


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


def start(
    stack: contextlib.ExitStack, specs: list[tuple[str, dict[str, str], int | None]], service: str
) -> list[ServerProcess]:
    """Start one process per ``(target, env, port)`` in parallel; each is stopped at teardown."""
    servers = [
        ServerProcess(target, service=service, port=port, env={"SHOAL_DRAIN_GRACE": "0", **env})
        for target, env, port in specs
    ]
    for server in servers:
        stack.callback(server.stop)  # registered first: stopped even if a start fails
    with ThreadPoolExecutor(len(servers)) as pool:
        list(pool.map(lambda s: s.start(timeout=30), servers))
    return servers


def backends(stack: contextlib.ExitStack, n: int, **env: str) -> list[ServerProcess]:
    return start(stack, [(BACKEND, dict(env), None) for _ in range(n)], "users")


async def hammer(client: AsyncClient, total: int, concurrency: int, on_done=None):
    """``total`` GETs of /whoami with ``concurrency`` workers; (ports answered, errors)."""
    ports: list[str] = []
    errors: list[BaseException] = []
    todo = iter(range(total))

    async def worker() -> None:
        for _ in todo:
            try:
                response = await client.get("http://users/whoami")
                ports.append(response.json()["port"])
            except UpstreamError as exc:
                errors.append(exc)
            if on_done is not None:
                on_done(len(ports) + len(errors))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ports, errors


async def test_killing_one_of_three_instances_fails_no_get(stack):
    servers = backends(stack, 3)
    victim = servers[0]
    client = AsyncClient(
        service="itest-kill",
        resolver=StaticResolver({"users": [s.url for s in servers]}),
        balancer="round_robin",  # guarantees the victim has traffic (and pooled connections)
    )
    killed_at: list[int] = []

    def kill_after_100(done: int) -> None:
        if done >= 100 and not killed_at:
            killed_at.append(done)
            victim.kill()

    try:
        ports, errors = await hammer(client, 400, 8, kill_after_100)
    finally:
        await client.aclose()
    assert killed_at, "the victim was never killed"
    assert errors == []
    assert len(ports) == 400
    assert str(victim.port) in ports[:90]  # it did serve before the kill
    assert str(victim.port) not in ports[120:]
    assert {str(s.port) for s in servers[1:]} <= set(ports[120:])


def test_sync_client_survives_a_killed_instance(stack):
    servers = backends(stack, 2)
    client = Client(
        service="itest-sync",
        resolver=StaticResolver({"users": [s.url for s in servers]}),
        balancer="round_robin",
    )
    ports = []
    with client:
        for i in range(120):
            if i == 40:
                servers[0].kill()
            ports.append(client.get("http://users/whoami").json()["port"])
    assert len(ports) == 120
    assert set(ports[:40]) == {str(s.port) for s in servers}
    assert set(ports[45:]) == {str(servers[1].port)}


async def test_traffic_shifts_away_from_a_slow_instance(stack):
    # 1 s, not less: on a loaded 2-core machine the "fast" backends' answers were seen taking
    # 0.4 s, and an instance no slower than the others rightly gets its share.
    servers = start(
        stack,
        [(BACKEND, {"APP_DELAY": "1.0"}, None), (BACKEND, {}, None), (BACKEND, {}, None)],
        "users",
    )
    slow = str(servers[0].port)
    client = AsyncClient(
        service="itest-slow", resolver=StaticResolver({"users": [s.url for s in servers]})
    )
    try:
        ports, errors = await hammer(client, 300, 6)
    finally:
        await client.aclose()
    assert errors == []
    share = Counter(ports)[slow] / len(ports)
    assert share < 0.10, f"slow instance got {share:.0%} of the traffic (uniform: 33%)"


async def test_breaker_opens_when_all_are_down_fails_fast_and_closes_when_they_return(stack):
    servers = backends(stack, 2)
    ports = [s.port for s in servers]
    client = AsyncClient(
        service="itest-breaker",
        resolver=StaticResolver({"users": [s.url for s in servers]}),
        breaker=BreakerPolicy(minimum_calls=4, window_size=10, wait_in_open=1.0,
                              half_open_probes=1),
        retry=RetryPolicy(max_attempts=2),
    )
    breaker = client.upstream("users").breaker
    labels = {"service": "itest-breaker", "upstream": "users"}
    try:
        assert (await client.get("http://users/whoami")).status == 200
        for server in servers:
            server.stop()
        failed_calls = 0
        while True:
            try:
                await client.get("http://users/whoami")
            except CircuitOpenError:
                break
            except UpstreamError:
                failed_calls += 1
                assert failed_calls < 10, "the breaker never opened"
        assert failed_calls <= 4  # minimum_calls=4 attempts, 2 attempts per call
        assert breaker.state is BreakerState.OPEN
        assert REGISTRY.get_sample_value("shoal_client_breaker_state", labels) == 1

        started = time.perf_counter()
        for _ in range(20):
            with pytest.raises(CircuitOpenError):
                await client.get("http://users/whoami")
        assert time.perf_counter() - started < 0.05  # no connection attempted

        start(stack, [(BACKEND, {}, port) for port in ports], "users")
        deadline = time.monotonic() + 20
        while True:
            try:
                response = await client.get("http://users/whoami")
                break
            except UpstreamError:
                assert time.monotonic() < deadline, "the breaker never closed"
                await asyncio.sleep(0.1)
        assert response.status == 200
        assert breaker.state is BreakerState.CLOSED
        assert REGISTRY.get_sample_value("shoal_client_breaker_state", labels) == 0
        closed = REGISTRY.get_sample_value(
            "shoal_client_breaker_transitions_total",
            {**labels, "from_state": "half_open", "to_state": "closed"},
        )
        assert closed == 1
    finally:
        await client.aclose()


@pytest.fixture
def three_hops(stack) -> str:
    """A → B → C: A and B are relays, C a backend. Returns A's URL."""
    a, b, c = free_port(), free_port(), free_port()
    start(
        stack,
        [
            (RELAY, {"SHOAL_DISCOVERY": f"static:next=http://127.0.0.1:{b}"}, a),
            (RELAY, {"SHOAL_DISCOVERY": f"static:next=http://127.0.0.1:{c}"}, b),
            (BACKEND, {}, c),
        ],
        "hop",
    )
    return f"http://127.0.0.1:{a}"


def get(url: str, deadline_ms: int) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers={"x-shoal-deadline-ms": str(deadline_ms)})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_incoming_deadline_bounds_the_call_two_hops_away(three_hops):
    status, body = get(three_hops + "/relay/relay/deadline", 800)
    assert status == 200
    received = int(str(body["deadline_ms"]))
    assert 0 < received < 800  # C saw what was left of A's deadline, not a fresh one

    started = time.monotonic()
    status, body = get(three_hops + "/relay/relay/hold?seconds=5", 500)
    elapsed = time.monotonic() - started
    assert status in (502, 504)
    assert elapsed < 1.5, f"C's 5 s hold was not cut short by A's 0.5 s deadline ({elapsed:.2f}s)"
