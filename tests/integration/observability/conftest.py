"""The reference shop under ``shoal up --detach`` on free ports, shared by this package's tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.fleet.conftest import (
    ROOT,
    fleet_factory,
    group_pids,
    pid_alive,
    shoal,
    wait_until,
)

from shoal.testing import free_port

ARTIFACTS = ROOT / "test-artifacts"


def require_binary(path: str, what: str) -> str:
    """The binary's path; skip (or fail under SHOAL_REQUIRE_EXTERNAL=1) when it is absent."""
    found = shutil.which(path)
    if found is None:
        reason = f"{what} is not installed ({path} not found)"
        if os.environ.get("SHOAL_REQUIRE_EXTERNAL") == "1":
            pytest.fail(reason + " and SHOAL_REQUIRE_EXTERNAL=1")
        pytest.skip(reason)
    return found


class Shop:
    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.control = f"http://127.0.0.1:{port}"
        self.token = (state_dir / "token").read_text().strip()
        self.pids: set[int] = set()

    def api(self, path: str, timeout: float = 30) -> Any:
        req = urllib.request.Request(self.control + path,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def status(self) -> dict[str, Any]:
        status = self.api("/v1/status")
        for svc in status["services"]:
            self.pids.update(i["pid"] for i in svc["instances"] if i["pid"])
        return status

    @property
    def gateway(self) -> str:
        # The gateway replica's own address (from the registry): what the shop's routes serve.
        svc = next(s for s in self.status()["services"] if s["service"] == "gateway")
        return svc["endpoints"][0]

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.gateway + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, None

    def traced_order(self, trace_id: str, user_id: int) -> int:
        """POST an order under a known W3C trace id (gateway → orders → users)."""
        code, _ = self.call("POST", "/api/orders",
                            {"user_id": user_id,
                             "items": [{"sku": "tea", "quantity": 1, "unit_price": "2.50"}]},
                            headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        return code


class Load:
    """Bounded background traffic through the gateway: ``stop()`` joins it."""

    def __init__(self, shop: Shop, user_id: int, seconds: float = 20.0) -> None:
        self._stop = threading.Event()
        self.sent = 0
        base = shop.gateway

        def run() -> None:
            deadline = threading.Event()
            timer = threading.Timer(seconds, deadline.set)
            timer.start()
            try:
                while not (self._stop.is_set() or deadline.is_set()):
                    with contextlib.suppress(OSError), urllib.request.urlopen(
                            f"{base}/api/users/{user_id}", timeout=5) as resp:
                        resp.read()
                    self.sent += 1
                    self._stop.wait(0.01)
            finally:
                timer.cancel()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _shop_spec(tmp: Path, control_port: int, gateway_port: int) -> Path:
    text = (ROOT / "examples/shop/shoal.yaml").read_text()
    text = text.replace("SHOP_DATA_DIR: .shoal/data", f"SHOP_DATA_DIR: {tmp / 'data'}")
    text = re.sub(r"^gateway:\n  port: \d+", f"gateway:\n  port: {gateway_port}", text,
                  flags=re.MULTILINE)
    text += f"\ncontrol:\n  port: {control_port}\n"
    path = tmp / "shoal.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="package")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("shop")
    (tmp / "data").mkdir()
    port = free_port()
    spec = _shop_spec(tmp, port, free_port())
    state = tmp / ".shoal"
    result = shoal("up", str(spec), "--detach", "--state-dir", str(state), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/login?token=" in result.stdout  # `shoal up` prints the dashboard URL
    fleet = Shop(state, port)
    fleet.status()
    try:
        yield fleet
    finally:
        control = json.loads((state / "control.json").read_text()) if (
            state / "control.json").exists() else None
        shoal("down", "--state-dir", str(state), timeout=90)
        if control and pid_alive(int(control["pid"])):
            os.kill(int(control["pid"]), signal.SIGKILL)
        for pid in fleet.pids:
            for child in group_pids(pid):
                os.kill(child, signal.SIGKILL)


@pytest.fixture(scope="package")
def shop_user(shop: Shop) -> int:
    code, user = shop.call("POST", "/api/users", {"email": "obs@example.com", "name": "Obs"})
    assert code == 201, user
    return int(user["id"])


__all__ = ["ARTIFACTS", "Load", "Shop", "fleet_factory", "require_binary", "wait_until"]
