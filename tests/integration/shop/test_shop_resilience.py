"""Idempotency and degradation of the shop, with services stopped and restarted for real."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from tests.integration.shop.conftest import Shop, _make_shop, new_user

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(request: pytest.FixtureRequest, tmp_path) -> Iterator[Shop]:
    """A shop of its own, for tests that stop and restart its services."""
    s = _make_shop(request.param, tmp_path, request)
    try:
        s.start_users()
        s.start_orders()
        yield s
    finally:
        s.stop_all()


def order_body(user_id: int, quantity: int = 1) -> dict[str, object]:
    return {"user_id": user_id, "items": [{"sku": "IDEM-1", "quantity": quantity,
                                           "unit_price": "4.20"}]}


def test_same_key_and_body_replays_the_same_answer_and_survives_a_restart(fleet, http):
    user = new_user(http, fleet)
    key = secrets.token_hex(8)
    url = fleet.orders.url + "/orders"
    first = http.post(url, json=order_body(user["id"]), headers={"Idempotency-Key": key})
    assert first.status_code == 201
    again = http.post(url, json=order_body(user["id"]), headers={"Idempotency-Key": key})
    assert (again.status_code, again.json()) == (201, first.json())
    assert again.headers["location"] == first.headers["location"]

    fleet.orders.stop()
    fleet.start_orders()
    url = fleet.orders.url + "/orders"
    after_restart = http.post(url, json=order_body(user["id"]), headers={"Idempotency-Key": key})
    assert (after_restart.status_code, after_restart.json()) == (201, first.json())
    assert fleet.count("SELECT count(*) FROM idempotency_keys WHERE key = :k", k=key) == 1
    assert fleet.count("SELECT count(*) FROM orders WHERE user_id = :u", u=user["id"]) == 1


def test_same_key_with_a_different_body_is_422(fleet, http):
    user = new_user(http, fleet)
    key = secrets.token_hex(8)
    url = fleet.orders.url + "/orders"
    assert http.post(url, json=order_body(user["id"]),
                     headers={"Idempotency-Key": key}).status_code == 201
    other = http.post(url, json=order_body(user["id"], quantity=2),
                      headers={"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert fleet.count("SELECT count(*) FROM orders WHERE user_id = :u", u=user["id"]) == 1


def test_concurrent_duplicates_create_exactly_one_order(fleet, http):
    user = new_user(http, fleet)
    key = secrets.token_hex(8)
    url = fleet.orders.url + "/orders"
    n = 8
    barrier = threading.Barrier(n)
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(timeout=30) as client:
            barrier.wait(10)
            resp = client.post(url, json=order_body(user["id"]), headers={"Idempotency-Key": key})
        with lock:
            results.append(resp)

    threads = [threading.Thread(target=post) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["id"] for r in results}) == 1
    assert fleet.count("SELECT count(*) FROM orders WHERE user_id = :u", u=user["id"]) == 1


def test_users_down_degrades_reads_and_refuses_writes_without_writing(fleet, http):
    user = new_user(http, fleet)
    created = http.post(fleet.orders.url + "/orders", json=order_body(user["id"]))
    assert created.status_code == 201
    order_url = fleet.orders.url + created.headers["location"]
    assert http.get(order_url).json()["user"]["id"] == user["id"]
    before = fleet.count("SELECT count(*) FROM orders")

    fleet.users.stop()
    degraded = http.get(order_url)
    assert degraded.status_code == 200
    assert degraded.json()["user"] is None
    assert degraded.json()["degraded"] == ["user"]
    assert degraded.headers["shoal-degraded"] == "user"
    assert degraded.json()["id"] == created.json()["id"]

    refused = http.post(fleet.orders.url + "/orders", json=order_body(user["id"]),
                        headers={"Idempotency-Key": "during-outage"})
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert fleet.count("SELECT count(*) FROM orders") == before
    assert fleet.count("SELECT count(*) FROM idempotency_keys WHERE key = 'during-outage'") == 0

    fleet.start_users()
    # The breaker may still be open for a moment: poll until full responses come back.
    deadline = time.monotonic() + 30
    while True:
        body = http.get(order_url).json()
        if body["degraded"] == []:
            break
        assert time.monotonic() < deadline, "orders never recovered after users came back"
        time.sleep(0.1)
    assert body["user"]["id"] == user["id"]
    retried = http.post(fleet.orders.url + "/orders", json=order_body(user["id"]),
                        headers={"Idempotency-Key": "during-outage"})
    assert retried.status_code == 201
