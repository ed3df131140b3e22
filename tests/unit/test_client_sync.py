"""The sync client shares the policy stack; its own shell is checked here (no sockets)."""

from __future__ import annotations

import threading

import pytest

from shoal._context import deadline_scope
from shoal._errors import (
    BulkheadFullError,
    CircuitOpenError,
    UpstreamConnectError,
    UpstreamResetError,
    UpstreamStatusError,
)
from shoal.client import (
    BreakerPolicy,
    BulkheadPolicy,
    Client,
    Fallback,
    MockTransport,
    Request,
    Response,
    RetryPolicy,
)
from shoal.discovery import StaticResolver

A, B = "http://127.0.0.1:8001", "http://127.0.0.1:8002"


def make_client(handler, **kwargs) -> Client:
    client = Client(
        service="sync-tests",
        resolver=StaticResolver({"users": [A, B]}),
        transport=MockTransport(handler),
        **kwargs,
    )
    client._sleep = lambda delay: None  # type: ignore[method-assign]
    return client


def test_a_connect_error_is_retried_for_any_method_but_a_reset_only_if_idempotent():
    def refuse(request: Request) -> Response:
        if request.instance == A:
            raise UpstreamConnectError("refused", service="users", instance=A)
        return Response(201)

    assert make_client(refuse).post("http://users/o", content=b"x").status == 201

    def reset(request: Request) -> Response:
        raise UpstreamResetError("reset", service="users", instance=request.instance)

    client = make_client(reset)
    with pytest.raises(UpstreamResetError) as info:
        client.post("http://users/o", content=b"x")
    assert info.value.attempts == 1
    with pytest.raises(UpstreamResetError) as info:
        client.get("http://users/o")
    assert info.value.attempts == 3


def test_retry_goes_to_the_other_instance_and_headers_carry_the_deadline():
    seen: list[Request] = []

    def handler(request: Request) -> Response:
        seen.append(request)
        return Response(502 if request.instance == A else 200, instance=request.instance)

    with make_client(handler, balancer="round_robin") as client, deadline_scope(1.0):
        response = client.get("http://users/x")
    assert response.status == 200
    assert [r.instance for r in seen] == [A, B]
    assert int(seen[0].headers["x-shoal-deadline-ms"]) <= 1000


def test_breaker_and_fallback():
    client = make_client(
        lambda r: Response(500),
        breaker=BreakerPolicy(minimum_calls=2),
        retry=RetryPolicy(max_attempts=1),
    )
    for _ in range(2):
        with pytest.raises(UpstreamStatusError):
            client.get("http://users/x")
    with pytest.raises(CircuitOpenError):
        client.get("http://users/x")
    fallback = Fallback(on=(CircuitOpenError,), handler=lambda e: Response(200, content=b"{}"))
    assert client.get("http://users/x", fallback=fallback).degraded == "CircuitOpenError"


def test_bulkhead_is_shared_by_threads():
    entered = threading.Barrier(3)
    release = threading.Event()

    def handler(request: Request) -> Response:
        entered.wait(timeout=5)
        release.wait(timeout=5)
        return Response(200)

    client = make_client(handler, bulkhead=BulkheadPolicy(max_concurrent=2))
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(client.get("http://users/x").status))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    entered.wait(timeout=5)
    with pytest.raises(BulkheadFullError):
        client.get("http://users/x")
    release.set()
    for thread in threads:
        thread.join(timeout=5)
    assert results == [200, 200]
    assert client.upstream("users").bulkhead.in_flight == 0


# -- discovery updates from other threads ----------------------------------------------------

C = "http://127.0.0.1:8003"


def urls(client: Client) -> list[str]:
    return [inst.url for inst in client.upstream("users").table.instances]


def on_a_thread(fn, *args) -> None:
    """``fn(*args)`` on another thread (as a resolver calls its listeners), until it returns."""
    thread = threading.Thread(target=fn, args=args)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "the listener blocked"


def echo(request: Request) -> Response:
    return Response(200, instance=request.instance)


def test_an_update_from_a_thread_is_applied_under_the_clients_lock() -> None:
    resolver = StaticResolver({"users": [A]})
    client = Client(service="sync-tests", resolver=resolver, transport=MockTransport(echo))
    assert urls(client) == [A]
    on_a_thread(resolver.set_endpoints, "users", [B])  # the lock is free: applied at once
    assert urls(client) == [B]
    with client._lock:  # a call is updating the policy state
        on_a_thread(resolver.set_endpoints, "users", [C])  # returns without waiting ...
        assert urls(client) == [B]  # ... and changes nothing without the lock
    assert client.get("http://users/x").instance == C  # the next attempt applies it


def test_endpoint_flips_from_a_thread_while_threads_call() -> None:
    resolver = StaticResolver({"users": [A, B]})
    client = Client(service="sync-tests", resolver=resolver, transport=MockTransport(echo))
    stop = threading.Event()
    failures: list[BaseException] = []
    last: set[str] = set()

    def flip() -> None:
        nonlocal last
        flips = 0
        while not stop.is_set():
            table = [C] if flips % 2 == 0 else [A, B]
            resolver.set_endpoints("users", table)
            flips, last = flips + 1, set(table)

    def calls() -> None:
        try:
            for _ in range(1000):
                assert client.get("http://users/x").status == 200
        except BaseException as exc:
            failures.append(exc)

    flipper = threading.Thread(target=flip)
    callers = [threading.Thread(target=calls) for _ in range(4)]
    flipper.start()
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=60)
    stop.set()
    flipper.join(timeout=5)
    assert not failures
    assert {client.get("http://users/x").instance for _ in range(10)} <= last
    assert set(urls(client)) == last
