"""The gateway block of a spec: replicas sharing the public port, routing to the registry."""

from __future__ import annotations

import json
import urllib.request

import pytest
from tests.integration.fleet.conftest import shoal

from shoal.testing import free_port

pytestmark = pytest.mark.integration


def test_gateway_replicas_share_the_spec_port_and_route_to_ready_replicas(fleet_factory):
    port = free_port()
    fleet = fleet_factory(f"""
services:
  api:
    app: tests.apps.chassis_fastapi:app
    replicas: 2
gateway:
  port: {port}
  replicas: 2
  routes:
    - {{prefix: /api, service: api, rewrite: /}}
""")
    status = fleet.status()
    assert status["gateway"] == f"http://127.0.0.1:{port}"
    gateway = next(s for s in status["services"] if s["service"] == "gateway")
    assert len(gateway["endpoints"]) == 2
    for _ in range(20):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/hello", timeout=10) as resp:
            assert resp.status == 200
            assert json.loads(resp.read()) == {"hello": "world"}
    # each gateway replica answers on its own port too (what the platform probes)
    for inst in gateway["instances"]:
        with urllib.request.urlopen(inst["url"] + "/api/hello", timeout=10) as resp:
            assert resp.status == 200
    assert shoal("down", "--state-dir", str(fleet.state_dir)).returncode == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/hello", timeout=2)
