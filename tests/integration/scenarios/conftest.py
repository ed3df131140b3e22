"""One shop fleet (``shoal up --detach``) shared by the resilience scenarios, and their tools.

The fleet runs from a temporary copy of ``examples/shop/shoal.yaml``: free ports for the
control plane and the gateway, databases in the test's temp dir, three users replicas, orders
autoscaled on req/s with a 5 s stabilization window, a bulkhead of 8 calls to users.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.fleet.conftest import Fleet, group_pids, pid_alive

from shoal.platform._load import LoadPlan, LoadReport, run_load
from shoal.testing import (
    free_port,
    wait_until,  # noqa: F401 - re-exported to the tests here
)

ROOT = Path(__file__).resolve().parents[3]
ARTIFACT = ROOT / "test-artifacts" / "scenarios.json"
USERS_BULKHEAD = 8
_figures: dict[str, Any] = {}


def record(scenario: str, **figures: Any) -> None:
    """Print a scenario's figures and keep them for ``test-artifacts/scenarios.json``."""
    _figures[scenario] = figures
    print(f"\n[{scenario}] " + json.dumps(figures, sort_keys=True), flush=True)


def shoal(*args: str, timeout: float = 120, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shoal", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False, env=env)



def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return (resp.status, {k.lower(): v for k, v in resp.headers.items()},
                    json.loads(raw) if raw else None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, parsed


class ShopFleet(Fleet):
    """The shop from a copy of its spec, with free ports and its data in ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp / "shoal.yaml", tmp / ".shoal", free_port())
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.gateway_port = free_port()
        self.env = {**os.environ, "SHOAL_AUTOSCALE_INTERVAL": "1"}
        self.user_id = 0
        self.order_id = 0
        self._gateway = ""

    @property
    def gateway(self) -> str:
        # The gateway replica's own registered address (it also listens on gateway.port).
        if not self._gateway:
            self._gateway = self.service("gateway")["endpoints"][0]
        return self._gateway

    def write_spec(self) -> None:
        spec = yaml.safe_load((ROOT / "examples/shop/shoal.yaml").read_text())
        spec["control"] = {"port": self.port}
        spec["gateway"]["port"] = self.gateway_port
        users, orders = spec["services"]["users"], spec["services"]["orders"]
        users["replicas"] = 3
        for svc in (users, orders):
            svc["env"]["SHOP_DATA_DIR"] = str(self.data_dir)
        orders["env"]["ORDERS_USERS_MAX_CONCURRENT"] = str(USERS_BULKHEAD)
        orders["autoscale"] = {"min": 2, "max": 4, "metric": "rps", "target": 15,
                               "scale_down_stabilization": 5}
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def shoal(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return shoal(*args, "--state-dir", str(self.state_dir), timeout=timeout, env=self.env)

    def up(self) -> None:
        self.write_spec()
        result = shoal("up", str(self.spec_path), "--detach", "--state-dir",
                       str(self.state_dir), timeout=180, env=self.env)
        assert result.returncode == 0, result.stdout + result.stderr
        self.status()

    def down(self) -> None:
        control = self.state_dir / "control.json"
        pid = json.loads(control.read_text())["pid"] if control.exists() else 0
        if pid:
            self.shoal("down", timeout=90)
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        for seen in self.seen_pids:
            for child in group_pids(seen):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)

    def api(self, method: str, path: str, body: Any = None, token: str | None = None,
            timeout: float = 60) -> tuple[int, Any]:
        # JSON bodies with their content type (the chaos routes read them).
        code, _, data = http(method, f"http://127.0.0.1:{self.port}{path}", body,
                             {"Authorization": f"Bearer {token or self.token}"}, timeout=timeout)
        return code, data

    def ready(self, name: str) -> list[dict[str, Any]]:
        return [i for i in self.service(name)["instances"] if i["state"] == "ready"]

    def metrics(self, name: str) -> list[str]:
        """The ``/metrics`` text of each ready replica of ``name``."""
        texts = []
        for inst in self.ready(name):
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{inst['url']}/metrics", timeout=5) as resp:
                    texts.append(resp.read().decode())
        return texts

    def orders_db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data_dir / "orders.db", timeout=10)


def metric_values(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples of ``name`` whose labels include ``labels``."""
    out = []
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            out.append(float(value))
    return out


class Load:
    """An open-loop load (``shoal.platform._load``) running in a thread; ``stop()`` ends it."""

    def __init__(self, plan: LoadPlan, **kwargs: Any) -> None:
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(1)
        self.started = time.monotonic()
        self._future: Future[LoadReport] = self._pool.submit(
            lambda: asyncio.run(run_load(plan, should_stop=self._stop.is_set, **kwargs)))

    def stop(self) -> None:
        self._stop.set()

    def result(self, timeout: float = 120) -> LoadReport:
        try:
            return self._future.result(timeout)
        finally:
            self._pool.shutdown(wait=False)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShopFleet]:
    fleet = ShopFleet(tmp_path_factory.mktemp("scenarios"))
    try:
        fleet.up()
        code, _, user = http("POST", f"{fleet.gateway}/api/users",
                             {"name": "Ada", "email": "ada@example.com"})
        assert code == 201, user
        fleet.user_id = user["id"]
        code, _, order = http("POST", f"{fleet.gateway}/api/orders", {
            "user_id": fleet.user_id,
            "items": [{"sku": "SCN-1", "quantity": 1, "unit_price": "1.00"}]})
        assert code == 201, order
        fleet.order_id = order["id"]
        yield fleet
    finally:
        fleet.down()
        ARTIFACT.parent.mkdir(exist_ok=True)
        previous = {}
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(ARTIFACT.read_text())
        ARTIFACT.write_text(json.dumps({**previous, **_figures}, indent=2, sort_keys=True))
