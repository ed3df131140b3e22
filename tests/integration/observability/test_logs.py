"""``shoal logs`` against a running shop and against the store of a fleet that died."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


def test_logs_since_and_until_bound_the_lines_of_a_running_fleet(fleet_factory) -> None:
    fleet = fleet_factory(f"""
services:
  ticker:
    command: ["{sys.executable}", "-m", "tests.apps.ticker"]
    drain_grace: 1
""")

    def lines(*args: str) -> list[dict[str, Any]]:
        result = shoal("logs", "--service", "ticker", "--json", "--limit", "5000",
                       "--state-dir", str(fleet.state_dir), *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def started() -> dict[str, Any] | None:
        return next((e for e in lines() if e["message"] == "ticker started"), None)

    first = wait_until(started, 20, "the ticker's first line in the store")
    wait_until(lambda: time.time() > first["ts"] + 4, 10, "4 s of ticks")

    # Durations count back from now: the first line is older than 2 s, the last ticks not.
    before = time.time()
    recent = lines("--since", "2s")
    assert recent, "no line of the last 2 s"
    assert "ticker started" not in {e["message"] for e in recent}
    assert min(e["ts"] for e in recent) >= before - 2 - 0.05
    older = lines("--until", "2s")
    after = time.time()
    assert older[0]["message"] == "ticker started"
    assert max(e["ts"] for e in older) <= after - 2 + 0.05

    # ISO 8601 times, with a zone or without one (local time), bound both ends.
    cut = first["ts"] + 1.0
    utc = datetime.fromtimestamp(cut, UTC).isoformat()
    local = datetime.fromtimestamp(cut).isoformat()  # local time, no zone
    for since in (utc, local):
        later = lines("--since", since)
        assert later, since
        assert min(e["ts"] for e in later) >= cut - 0.001
    window = lines("--since", utc, "--until", datetime.fromtimestamp(cut + 1, UTC).isoformat())
    assert window
    assert all(cut - 0.001 <= e["ts"] <= cut + 1.001 for e in window)
    assert 3 <= len(window) <= 7  # a tick every 0.2 s
    assert lines("--until", local)[-1]["ts"] <= cut + 0.001

    result = shoal("logs", "--since", "yesterday", "--state-dir", str(fleet.state_dir))
    assert result.returncode == 2
    assert "--since 'yesterday'" in result.stderr
