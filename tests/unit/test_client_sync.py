"""The sync client shares the policy stack; its own shell is checked here (no sockets)."""

from __future__ import annotations

import threading

import pytest

from shoal._context import deadline_scope
from shoal._errors import BulkheadFullError, CircuitOpenError, UpstreamStatusError
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
