"""Two `shoal up` fleets sharing one etcd see each other's services."""

from __future__ import annotations

import json
import urllib.request

import pytest
from tests.integration.etcd_discovery.conftest import wait_until
from tests.integration.fleet.conftest import shoal

from shoal.testing import free_port

pytestmark = pytest.mark.integration


def fleet_spec(tmp, name, registry, services):
    port = free_port()
    path = tmp / f"{name}.yaml"
    path.write_text(f"system: {name}\ncontrol:\n  port: {port}\n  registry: {registry}\n"
                    f"services:\n{services}")
    return path


def test_a_service_in_one_fleet_calls_a_service_in_another_through_etcd(etcd_single, root,
                                                                         resolvers, tmp_path):
    registry = etcd_single.discovery(root)
    backend = fleet_spec(tmp_path, "backend", registry,
                         "  next:\n    app: tests.apps.chassis_fastapi:app\n    replicas: 2\n")
    front = fleet_spec(tmp_path, "front", registry,
                       "  relay:\n    app: tests.apps.relay:app\n")
    states = [tmp_path / "backend-state", tmp_path / "front-state"]
    try:
        for spec, state in zip((backend, front), states, strict=True):
            result = shoal("up", str(spec), "--detach", "--state-dir", str(state))
            assert result.returncode == 0, result.stderr
        watcher = resolvers(registry)
        seen: list[set[str]] = []
        watcher.subscribe("next", lambda table: seen.append({e.url for e in table}))
        wait_until(lambda: seen and len(seen[-1]) == 2, 20, "both backend replicas in etcd")

        status = json.loads(shoal("ps", "--json", "--state-dir", str(states[1])).stdout)
        relay_url = status["services"][0]["endpoints"][0]
        with urllib.request.urlopen(relay_url + "/relay/hello", timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read()) == {"hello": "world"}

        assert shoal("down", "--state-dir", str(states[0])).returncode == 0
        wait_until(lambda: seen[-1] == set(), 20, "the stopped fleet's replicas to leave etcd")
    finally:
        for state in states:
            if (state / "control.json").exists():
                shoal("down", "--state-dir", str(state))
