"""The async client's policy stack over an in-process MockTransport (no sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import threading

import pytest

from shoal._context import continue_trace, deadline_scope, enter_request
from shoal._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    NoHealthyInstanceError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTransportError,
)
from shoal._logging import capture_logs
from shoal._metrics import REGISTRY
from shoal.client import (
    AsyncClient,
    BreakerPolicy,
    BulkheadPolicy,
    Fallback,
    MockTransport,
    OutlierPolicy,
    Request,
    RequestBodyError,
    Response,
    RetryBudgetPolicy,
    RetryPolicy,
    UpstreamResetError,
)
from shoal.client._upstream import outcome_of
from shoal.discovery import Endpoint, StaticResolver

A, B, C = (f"http://127.0.0.1:{port}" for port in (8001, 8002, 8003))
_names = itertools.count()


def caller() -> str:
    return f"caller{next(_names)}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


#: The backoff delays each client would have slept, by ``id(client)`` (a compiled client
#: takes no new attributes).
_DELAYS: dict[int, list[float]] = {}


def delays(client: AsyncClient) -> list[float]:
    return _DELAYS[id(client)]


def make_client(handler, *, urls=(A, B, C), async_handler=None, **kwargs) -> AsyncClient:
    transport = (
        MockTransport(async_handler=async_handler)
        if async_handler
        else MockTransport(handler)
    )
    kwargs.setdefault("breaker", BreakerPolicy(minimum_calls=1000))
    client = AsyncClient(
        service=kwargs.pop("service", caller()),
        resolver=StaticResolver({"users": list(urls)}),
        transport=transport,
        **kwargs,
    )
    slept = _DELAYS[id(client)] = []

    async def no_sleep(delay: float) -> None:
        slept.append(delay)

    client._sleep = no_sleep  # type: ignore[method-assign]
    return client


def instance_of(request: Request) -> str:
    return request.instance


async def test_logical_url_goes_to_an_instance_with_context_headers():
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response.from_json({"id": 42})

    client = make_client(handler)
    trace = continue_trace("00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    scope = enter_request(trace, "req-1", None)
    try:
        with deadline_scope(2.0):
            response = await client.get("http://users/users/42?x=1")
    finally:
        scope.exit()
    assert response.json() == {"id": 42}
    request = seen[0]
    assert request.url in {u + "/users/42?x=1" for u in (A, B, C)}
    assert request.headers["traceparent"].startswith("00-" + "a" * 32 + "-")
    assert request.headers["x-request-id"] == "req-1"
    assert 1500 < int(request.headers["x-shoal-deadline-ms"]) <= 2000
    assert request.timeout is not None
    assert request.timeout <= 2.0


async def test_client_total_timeout_is_sent_as_the_deadline_without_an_incoming_one():
    seen: list[Request] = []
    client = make_client(lambda r: seen.append(r) or Response(200), timeouts=None)
    await client.get("http://users/x", timeout=0.5)
    assert 400 < int(seen[0].headers["x-shoal-deadline-ms"]) <= 500


async def test_idempotent_call_is_retried_on_another_instance_after_503():
    def handler(request: Request) -> Response:
        return Response(503 if request.instance == A else 200, instance=request.instance)

    client = make_client(handler, urls=(A, B), balancer="round_robin")
    response = await client.get("http://users/x")
    assert response.status == 200
    assert response.attempts == 2
    assert response.instance == B
    assert len(delays(client)) == 1
    labels = {"service": client.settings.service, "upstream": "users"}
    assert metric("shoal_client_retries_total", **labels, reason="status_503") == 1
    assert metric("shoal_client_calls_total", **labels, outcome="success") == 1


async def test_post_is_not_retried_on_503_unless_it_carries_an_idempotency_key():
    transport_calls = []

    def handler(request: Request) -> Response:
        transport_calls.append(request)
        return Response(503)

    client = make_client(handler)
    with pytest.raises(UpstreamStatusError) as info:
        await client.post("http://users/orders", json={"a": 1})
    assert info.value.status == 503
    assert info.value.attempts == 1
    assert len(transport_calls) == 1
    with pytest.raises(UpstreamStatusError) as info:
        await client.post("http://users/orders", json={}, headers={"Idempotency-Key": "k1"})
    assert info.value.attempts == 3
    assert len(transport_calls) == 4


async def test_a_connect_failure_is_retried_for_any_method():
    def refuse(request: Request) -> Response:
        if request.instance == A:
            raise UpstreamConnectError("refused", service="users", instance=A)
        return Response(201)

    client = make_client(refuse, urls=(A, B), balancer="round_robin")
    assert (await client.post("http://users/o", content=b"x")).status == 201


@pytest.mark.parametrize("error", [UpstreamResetError, UpstreamTransportError, UpstreamError])
async def test_a_transport_failure_that_is_no_connect_error_is_retried_only_if_idempotent(error):
    # (a reset, or a custom transport's error that does not say nothing was sent: the request
    # may have been applied)
    def fail(request: Request) -> Response:
        raise error("broke", service="users", instance=request.instance)

    client = make_client(fail)
    with pytest.raises(error) as info:
        await client.post("http://users/o", content=b"x")
    assert info.value.attempts == 1
    with pytest.raises(error) as info:
        await client.get("http://users/o")
    assert info.value.attempts == 3


def test_every_transport_failure_is_a_connect_error_outcome_but_a_failing_body_is_cancelled():
    for error in (UpstreamConnectError, UpstreamResetError, UpstreamTransportError):
        assert outcome_of(error("x", service="users")) == "connect_error"
    assert outcome_of(RequestBodyError("x", service="users")) == "cancelled"


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_other_4xx_are_returned_never_retried(status):
    client = make_client(lambda r: Response(status))
    response = await client.get("http://users/x")
    assert response.status == status
    assert response.attempts == 1
    with pytest.raises(UpstreamStatusError):
        response.raise_for_status("users")


async def test_429_honours_retry_after_and_gives_up_when_it_is_too_long():
    answers = iter([Response(429, {"retry-after": "2"}), Response(200)])
    client = make_client(lambda r: next(answers))
    assert (await client.get("http://users/x")).status == 200
    assert delays(client) == [2.0]

    client = make_client(lambda r: Response(429, {"retry-after": "120"}))
    response = await client.get("http://users/x")
    assert response.status == 429
    assert response.attempts == 1


async def test_read_timeouts_are_not_retried():
    def slow(request: Request) -> Response:
        raise UpstreamTimeoutError("slow", service="users", instance=request.instance)

    client = make_client(slow)
    with pytest.raises(UpstreamTimeoutError) as info:
        await client.get("http://users/x")
    assert info.value.attempts == 1


async def test_spent_deadline_fails_without_sending():
    seen = []
    client = make_client(lambda r: seen.append(r) or Response(200))
    with deadline_scope(-1.0), pytest.raises(DeadlineExceededError) as info:
        await client.get("http://users/x")
    assert seen == []
    assert info.value.attempts == 0


async def test_timeout_under_the_incoming_deadline_is_deadline_exceeded():
    async def hang(request: Request) -> Response:
        assert request.timeout is not None
        await asyncio.sleep(request.timeout)
        raise UpstreamTimeoutError("timed out", service="users", instance=request.instance)

    client = make_client(None, async_handler=hang)
    with deadline_scope(0.05), pytest.raises(DeadlineExceededError):
        await client.get("http://users/x")


async def test_backoff_that_would_overrun_the_deadline_is_not_taken():
    client = make_client(
        lambda r: Response(503), retry=RetryPolicy(backoff_initial=5.0, backoff_max=5.0)
    )
    client._rng.seed(0)
    with deadline_scope(0.5), pytest.raises(UpstreamStatusError) as info:
        await client.get("http://users/x")
    assert info.value.attempts <= 2


async def test_exhausted_budget_stops_retries_and_is_counted():
    client = make_client(
        lambda r: Response(503),
        retry_budget=RetryBudgetPolicy(percent_can_retry=0, min_retries_per_second=0),
    )
    with pytest.raises(UpstreamStatusError) as info:
        await client.get("http://users/x")
    assert info.value.attempts == 1
    labels = {"service": client.settings.service, "upstream": "users"}
    assert metric("shoal_client_retry_budget_exhausted_total", **labels) == 1


async def test_breaker_opens_then_fails_fast_and_logs_the_transition():
    seen = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response(500)

    client = make_client(
        handler,
        breaker=BreakerPolicy(minimum_calls=5, wait_in_open=30),
        retry=RetryPolicy(max_attempts=1),
    )
    trace = continue_trace(None)
    scope = enter_request(trace, "req-b", None)
    try:
        with capture_logs() as lines:
            for _ in range(5):
                with pytest.raises(UpstreamStatusError):
                    await client.get("http://users/x")
            with pytest.raises(CircuitOpenError) as info:
                await client.get("http://users/x")
    finally:
        scope.exit()
    assert len(seen) == 5
    assert info.value.service == "users"
    assert 29 < info.value.retry_after <= 30
    transitions = [line for line in lines if line["event"] == "client.breaker_transition"]
    assert transitions[0]["to_state"] == "open"
    assert transitions[0]["trace_id"] == trace.trace_id
    labels = {"service": client.settings.service, "upstream": "users"}
    assert metric("shoal_client_breaker_state", **labels) == 1
    assert (
        metric(
            "shoal_client_breaker_transitions_total",
            **labels,
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert metric("shoal_client_calls_total", **labels, outcome="circuit_open") == 1


async def test_fallback_answers_declared_errors_and_marks_the_result_degraded():
    client = make_client(
        lambda r: Response(500),
        breaker=BreakerPolicy(minimum_calls=1),
        retry=RetryPolicy(max_attempts=1),
    )
    fallback = Fallback(on=(CircuitOpenError,), handler=lambda exc: Response.from_json([]))
    with pytest.raises(UpstreamStatusError):  # not declared: still raised
        await client.get("http://users/recs", fallback=fallback)
    response = await client.get("http://users/recs", fallback=fallback)
    assert response.degraded == "CircuitOpenError"
    assert response.json() == []
    labels = {"service": client.settings.service, "upstream": "users"}
    assert metric("shoal_client_fallbacks_total", **labels, error="CircuitOpenError") == 1


async def test_bulkhead_rejects_excess_concurrent_calls_and_releases_on_completion():
    gate = asyncio.Event()

    async def wait(request: Request) -> Response:
        await gate.wait()
        return Response(200)

    client = make_client(None, async_handler=wait, bulkhead=BulkheadPolicy(max_concurrent=2))
    calls = [asyncio.create_task(client.get("http://users/x")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(BulkheadFullError) as info:
        await client.get("http://users/x")
    assert info.value.limit == 2
    gate.set()
    assert [r.status for r in await asyncio.gather(*calls)] == [200, 200]
    assert (await client.get("http://users/x")).status == 200


async def test_cancelled_call_releases_its_slot_and_instance():
    async def hang(request: Request) -> Response:
        await asyncio.sleep(10)
        raise AssertionError

    client = make_client(None, async_handler=hang, bulkhead=BulkheadPolicy(max_concurrent=1))
    task = asyncio.create_task(client.get("http://users/x"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    upstream = client.upstream("users")
    assert upstream.bulkhead.in_flight == 0
    assert all(inst.outstanding == 0 for inst in upstream.table.instances)


async def test_failing_instance_is_ejected_and_traffic_avoids_it():
    def handler(request: Request) -> Response:
        return Response(503 if request.instance == A else 200, instance=request.instance)

    client = make_client(
        handler,
        balancer="round_robin",
        outlier=OutlierPolicy(consecutive_failures=2),
        retry=RetryPolicy(max_attempts=1),
    )
    with capture_logs() as lines:
        for _ in range(40):
            with contextlib.suppress(UpstreamStatusError):
                await client.get("http://users/x")
    assert any(line["event"] == "client.instance_ejected" for line in lines)
    labels = {"service": client.settings.service, "upstream": "users"}
    assert metric("shoal_client_ejections_total", **labels) == 1
    answered = [r.instance for r in client._transport.requests[-20:]]  # type: ignore[attr-defined]
    assert A not in answered


async def test_unknown_service_has_no_healthy_instance():
    client = make_client(lambda r: Response(200))
    with pytest.raises(NoHealthyInstanceError) as info:
        await client.get("http://nobody/x")
    assert info.value.service == "nobody"


async def test_discovery_updates_reach_the_client_without_a_query_per_request():
    resolver = StaticResolver({"users": [A]})
    client = AsyncClient(
        service=caller(), resolver=resolver, transport=MockTransport(lambda r: Response(200))
    )
    await client.get("http://users/x")
    assert client._transport.requests[-1].instance == A  # type: ignore[attr-defined]
    resolver.set_endpoints("users", [B])
    await client.get("http://users/x")
    assert client._transport.requests[-1].instance == B  # type: ignore[attr-defined]
    await client.aclose()


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"balancer": "random"}, "balancer"),
        ({"service": ""}, "service"),
    ],
)
def test_bad_client_configuration_fails_at_construction(kwargs, setting):
    with pytest.raises(ConfigurationError) as info:
        AsyncClient(
            **{"service": "me", "resolver": StaticResolver(), **kwargs},
            transport=MockTransport(lambda r: Response(200)),
        )
    assert info.value.setting == setting


async def test_url_without_a_logical_name_is_rejected():
    client = make_client(lambda r: Response(200))
    with pytest.raises(ConfigurationError, match="url"):
        await client.get("users/x")
    with pytest.raises(ConfigurationError, match="url"):
        await client.get("http://users:8000/x")


# -- discovery updates from other threads ----------------------------------------------------

D = "http://127.0.0.1:8004"


async def test_endpoint_flips_from_a_thread_never_race_the_loop() -> None:
    # A resolver thread flips "users" between two disjoint tables as fast as it can while the
    # loop balances 10,000 calls. An update is applied on the client's loop (the table only
    # changes there), so each call goes to an instance of the table as applied when it was
    # sent: never to one an applied update removed. No call fails.
    resolver = StaticResolver({"users": [A, B]})
    wrong: list[str] = []

    async def handler(request: Request) -> Response:
        if client.upstream("users").table.get(request.instance) is None:
            wrong.append(request.instance)
        await asyncio.sleep(0)  # (many calls in flight when an update is applied)
        return Response(200, instance=request.instance)

    client = AsyncClient(service=caller(), resolver=resolver,
                         transport=MockTransport(async_handler=handler))
    await client.get("http://users/x")
    stop = threading.Event()
    flips = 0
    last: set[str] = set()

    def flip() -> None:
        nonlocal flips, last
        while not stop.is_set():
            table = [C, D] if flips % 2 == 0 else [A, B]
            resolver.set_endpoints("users", table)
            flips, last = flips + 1, set(table)

    thread = threading.Thread(target=flip)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # (the threads take turns often: 50 times the default)
    thread.start()
    try:
        for _ in range(100):
            responses = await asyncio.gather(*(client.get("http://users/x") for _ in range(100)))
            assert all(r.status == 200 for r in responses)
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert flips > 10
    assert not wrong, f"{len(wrong)} calls went to an instance no longer in the table"
    for _ in range(3):
        await asyncio.sleep(0)  # (the last update's callback runs)
    assert {inst.url for inst in client.upstream("users").table.instances} == last
    await asyncio.gather(*(client.get("http://users/x") for _ in range(20)))
    assert {r.instance for r in client._transport.requests[-20:]} <= last  # type: ignore[attr-defined]
    await client.aclose()


def urls(client: AsyncClient) -> list[str]:
    return [inst.url for inst in client.upstream("users").table.instances]


def from_a_thread(fn, *args) -> None:
    """Call ``fn(*args)`` on another thread (as a resolver would), until it returns; its
    exception, if any, is raised here."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive()
    if failures:
        raise failures[0]


def echo(request: Request) -> Response:
    return Response(200, instance=request.instance)


async def test_an_update_from_a_thread_is_applied_on_the_loop_not_on_that_thread() -> None:
    resolver = StaticResolver({"users": [A]})
    client = AsyncClient(service=caller(), resolver=resolver, transport=MockTransport(echo))
    await client.get("http://users/x")
    from_a_thread(resolver.set_endpoints, "users", [B])  # (the loop is busy here, in this test)
    assert urls(client) == [A]  # handed to the loop: applied once the loop runs it ...
    await asyncio.sleep(0)
    assert urls(client) == [B]
    from_a_thread(resolver.set_endpoints, "users", [C])
    assert (await client.get("http://users/x")).instance == C  # ... or by the next attempt
    await client.aclose()


async def test_an_update_on_the_loops_own_thread_is_applied_at_once() -> None:
    resolver = StaticResolver({"users": [A]})
    client = AsyncClient(service=caller(), resolver=resolver, transport=MockTransport(echo))
    await client.get("http://users/x")
    resolver.set_endpoints("users", [B])
    assert urls(client) == [B]
    await client.aclose()


def test_a_client_made_before_its_loop_applies_updates_from_its_first_call() -> None:
    # As the gateway does: the client and its subscriptions exist before the loop runs.
    resolver = StaticResolver({"users": [A]})
    client = AsyncClient(service=caller(), resolver=resolver, transport=MockTransport(echo))
    assert urls(client) == [A]  # the first table, at subscription
    from_a_thread(resolver.set_endpoints, "users", [B])
    assert urls(client) == [A]  # no loop to apply it on: kept for the first call
    assert asyncio.run(client.get("http://users/x")).instance == B


def test_an_update_after_the_loop_closed_reaches_the_next_loop() -> None:
    resolver = StaticResolver({"users": [A]})
    client = AsyncClient(service=caller(), resolver=resolver, transport=MockTransport(echo))
    assert asyncio.run(client.get("http://users/x")).instance == A  # (that loop is closed now)
    from_a_thread(resolver.set_endpoints, "users", [B])  # no error on the resolver's thread
    assert asyncio.run(client.get("http://users/x")).instance == B
    from_a_thread(resolver.set_endpoints, "users", [C])
    assert asyncio.run(client.get("http://users/x")).instance == C


def test_a_listener_called_after_the_client_closed_is_harmless() -> None:
    # A resolver may deliver to the listeners it had listed before the client unsubscribed.
    listeners: list = []

    class Keeping(StaticResolver):
        def subscribe(self, service, listener):
            listeners.append(listener)
            return super().subscribe(service, listener)

    client = AsyncClient(service=caller(), resolver=Keeping({"users": [A]}),
                         transport=MockTransport(echo))

    async def use_and_close() -> None:
        await client.get("http://users/x")
        await client.aclose()
        from_a_thread(listeners[0], [Endpoint(B)])  # (its loop still runs)

    asyncio.run(use_and_close())
    from_a_thread(listeners[0], [Endpoint(C)])  # (its loop has closed)
