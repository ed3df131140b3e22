"""``shoal logs`` against a running shop and against the store of a fleet that died."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from tests.integration.fleet.conftest import pid_alive, shoal, wait_until
from tests.integration.observability.conftest import Shop

from shoal.testing import free_port

pytestmark = pytest.mark.integration
TRACE = "5e0c1ad2b7c94ffd9a7f6d1e2b3c4d5e"


def test_shoal_logs_follows_one_trace_across_gateway_orders_and_users(
        shop: Shop, shop_user: int) -> None:
    assert shop.traced_order(TRACE, shop_user) == 201

    def traced() -> set[str] | None:
        result = shoal("logs", "--trace", TRACE, "--json", "--state-dir", str(shop.state_dir))
        assert result.returncode == 0, result.stderr
        services = {json.loads(line)["service"] for line in result.stdout.splitlines()}
        return services if services >= {"gateway", "orders", "users"} else None

    wait_until(traced, 15, "the trace's lines from gateway, orders and users")
    result = shoal("logs", "--service", "orders", "--grep", "order.created",
                   "--state-dir", str(shop.state_dir))
    assert "order.created" in result.stdout
    assert "gateway-1" not in result.stdout


def test_a_follower_long_poll_returns_a_line_as_soon_as_it_is_stored(shop: Shop,
                                                                     shop_user: int) -> None:
    cursor = shop.api("/v1/logs?limit=1")["cursor"]
    trace = "7d1f0e2a3b4c5d6e7f8091a2b3c4d5e6"
    timer = threading.Timer(0.5, shop.traced_order, (trace, shop_user))
    timer.start()
    try:
        page = shop.api(f"/v1/logs?after={cursor}&trace={trace}&wait=20")
    finally:
        timer.join()
    assert page["entries"], page
    assert {e["trace_id"] for e in page["entries"]} == {trace}


def test_a_crashing_replicas_last_lines_are_kept_and_readable_after_the_fleet_stopped(
        tmp_path: Path) -> None:
    spec = tmp_path / "shoal.yaml"
    spec.write_text(f"""system: crashy
control:
  port: {free_port()}
services:
  doomed:
    command: ["python", "-c", "import sys; print('about to fail', flush=True); \\
print('last words before exit', flush=True); sys.exit(3)"]
    replicas: 1
    probes:
      startup_timeout: 4
""")
    state = tmp_path / ".shoal"
    result = shoal("up", str(spec), "--detach", "--state-dir", str(state), timeout=60)
    assert result.returncode != 0
    wait_until(lambda: not (state / "control.json").exists(), 30, "the control plane to exit")
    control_pid = None
    if (state / "control.json").exists():  # pragma: no cover - covered by the wait above
        control_pid = json.loads((state / "control.json").read_text())["pid"]
    assert control_pid is None or not pid_alive(control_pid)
    logs = shoal("logs", "--service", "doomed", "--state-dir", str(state))
    assert logs.returncode == 0, logs.stderr
    assert "last words before exit" in logs.stdout
    assert "about to fail" in logs.stdout
