"""The shop's HTTP API against real processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from decimal import Decimal

import pytest
from tests.integration.shop.conftest import new_user

pytestmark = pytest.mark.integration


def test_users_crud_with_location_conflict_and_validation(shop, http):
    base = shop.users.url
    email = f"bo-{secrets.token_hex(4)}@example.com"
    created = http.post(base + "/users", json={"name": "Bo", "email": email})
    assert created.status_code == 201
    user = created.json()
    assert created.headers["location"] == f"/users/{user['id']}"
    assert http.get(base + created.headers["location"]).json() == user

    dup = http.post(base + "/users", json={"name": "Other", "email": email.upper()})
    assert dup.status_code == 409
    assert dup.headers["content-type"] == "application/problem+json"
    assert dup.json()["errors"][0]["field"] == "email"

    bad = http.post(base + "/users", json={"name": "", "email": "not-an-email"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in bad.json()["errors"]} == {"name", "email"}

    patched = http.patch(base + f"/users/{user['id']}", json={"name": "Bob"})
    assert patched.status_code == 200
    assert patched.json()["name"] == "Bob"
    assert patched.json()["email"] == email

    assert http.delete(base + f"/users/{user['id']}").status_code == 204
    gone = http.get(base + f"/users/{user['id']}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"


def test_users_cursor_pagination_visits_each_user_once(shop, http):
    ids = {new_user(http, shop, f"P{i}")["id"] for i in range(5)}
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = http.get(shop.users.url + "/users", params=params).json()
        seen += [u["id"] for u in page["items"]]
        assert len(page["items"]) <= 2
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids <= set(seen)
    assert len(seen) == len(set(seen))
    assert seen == sorted(seen)


def test_users_filter_by_email(shop, http):
    user = new_user(http, shop, "Filtered")
    page = http.get(shop.users.url + "/users", params={"email": user["email"]}).json()
    assert [u["id"] for u in page["items"]] == [user["id"]]


def test_order_is_created_with_decimal_money_and_embeds_the_user(shop, http):
    user = new_user(http, shop)
    body = {"user_id": user["id"], "items": [
        {"sku": "TEA-1", "quantity": 3, "unit_price": "0.10"},
        {"sku": "CUP-2", "quantity": 1, "unit_price": "19.99"},
    ]}
    created = http.post(shop.orders.url + "/orders", json=body)
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["total"] == "20.29"  # 3 x 0.10 + 19.99 exactly: no float rounding
    assert Decimal(order["total"]) == Decimal("0.30") + Decimal("19.99")
    assert created.headers["location"] == f"/orders/{order['id']}"

    fetched = http.get(shop.orders.url + created.headers["location"])
    assert fetched.status_code == 200
    detail = fetched.json()
    assert detail["user"] == {"id": user["id"], "name": user["name"], "email": user["email"]}
    assert detail["degraded"] == []
    assert "shoal-degraded" not in fetched.headers
    assert [i["unit_price"] for i in detail["items"]] == ["0.10", "19.99"]


def test_order_for_unknown_user_is_422_and_not_written(shop, http):
    before = shop.count("SELECT count(*) FROM orders")
    resp = http.post(shop.orders.url + "/orders", json={
        "user_id": 987654321, "items": [{"sku": "X", "quantity": 1, "unit_price": "1"}]})
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["errors"][0]["field"] == "body.user_id"
    assert shop.count("SELECT count(*) FROM orders") == before


@pytest.mark.parametrize("item", [
    {"sku": "X", "quantity": 0, "unit_price": "1"},
    {"sku": "X", "quantity": 1, "unit_price": "-0.01"},
    {"sku": "X", "quantity": 1, "unit_price": "1.001"},
    {"sku": "", "quantity": 1, "unit_price": "1"},
])
def test_invalid_order_items_are_422_naming_the_field(shop, http, item):
    resp = http.post(shop.orders.url + "/orders", json={"user_id": 1, "items": [item]})
    assert resp.status_code == 422
    fields = [e["field"] for e in resp.json()["errors"]]
    assert all(f.startswith("body.items.0.") for f in fields), fields


def test_orders_list_by_user_with_cursor(shop, http):
    user = new_user(http, shop)
    ids = []
    for n in range(3):
        resp = http.post(shop.orders.url + "/orders", json={
            "user_id": user["id"], "items": [{"sku": f"S{n}", "quantity": 1, "unit_price": "2"}]})
        ids.append(resp.json()["id"])
    first = http.get(shop.orders.url + "/orders",
                     params={"user_id": user["id"], "limit": 2}).json()
    assert [o["id"] for o in first["items"]] == ids[:2]
    second = http.get(shop.orders.url + "/orders", params={
        "user_id": user["id"], "limit": 2, "cursor": first["next_cursor"]}).json()
    assert [o["id"] for o in second["items"]] == ids[2:]
    assert second["next_cursor"] is None
    bad = http.get(shop.orders.url + "/orders", params={"cursor": "!!"})
    assert bad.status_code == 422


def test_both_services_publish_openapi_and_readiness_with_database(shop, http):
    for srv, path in ((shop.users, "/users/{user_id}"), (shop.orders, "/orders/{order_id}")):
        spec = http.get(srv.url + "/openapi.json").json()
        assert path in spec["paths"]
        ready = http.get(srv.url + "/readyz").json()
        assert ready["checks"]["database"]["status"] == "ok"
