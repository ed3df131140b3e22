"""A Locust load profile for the shop, through the gateway (docs only; tests use bounded loads).

    pip install locust
    locust -f examples/shop/locustfile.py --host http://127.0.0.1:8080
"""

from __future__ import annotations

import random
import uuid

from locust import HttpUser, between, task  # type: ignore[import-not-found]


class Shopper(HttpUser):  # type: ignore[misc]
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        email = f"{uuid.uuid4().hex[:12]}@example.com"
        resp = self.client.post("/api/users", json={"name": "Load", "email": email})
        self.user_id = resp.json()["id"]
        self.orders: list[int] = []

    @task(3)
    def place_order(self) -> None:
        body = {"user_id": self.user_id, "items": [
            {"sku": f"SKU-{random.randint(1, 50)}", "quantity": random.randint(1, 3),
             "unit_price": f"{random.randint(100, 5000) / 100:.2f}"}]}
        resp = self.client.post("/api/orders", json=body,
                                headers={"Idempotency-Key": uuid.uuid4().hex})
        if resp.status_code == 201:
            self.orders.append(resp.json()["id"])

    @task(5)
    def read_order(self) -> None:
        if self.orders:
            self.client.get(f"/api/orders/{random.choice(self.orders)}",
                            name="/api/orders/{id}")

    @task(1)
    def list_orders(self) -> None:
        self.client.get("/api/orders", params={"user_id": self.user_id, "limit": 10},
                        name="/api/orders?user_id")
