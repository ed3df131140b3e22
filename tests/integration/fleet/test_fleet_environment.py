"""Least privilege for replicas, read from ``/proc/PID/environ`` of the real processes.

A replica gets the platform's variables, its spec ``env``, the documented allow-list of the
environment ``shoal up`` ran in and its ``env_passthrough``; the gateway also gets the variables
its routes name as ``auth.secret_env``. It never gets the fleet's token: it reads the registry
and the fault board with two read-only credentials that can each do that one thing.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tests.integration.fleet.conftest import proc_environ, wait_until

from shoal.testing import free_port

pytestmark = pytest.mark.integration

PARENT = {
    "SHOAL_JWT_SECRET": "the-jwt-secret-of-the-shell",
    "SHOAL_CONTROL_TOKEN": "an-admin-token-of-another-fleet",
    "TEST_PARENT_SECRET": "a-cloud-key",
    "PYTHON_API_KEY": "not-an-interpreter-setting",
    "TEST_PASSED_THROUGH": "named-by-env-passthrough",
    "TEST_ROUTE_SECRET": "the-route-hs256-secret",
    "LANG": "C.UTF-8",
    "LC_TIME": "C.UTF-8",
    "TZ": "UTC",
    "PYTHONDONTWRITEBYTECODE": "1",
    "SHOAL_LOG_LEVEL": "INFO",
}
SECRETS = ("SHOAL_JWT_SECRET", "SHOAL_CONTROL_TOKEN", "TEST_PARENT_SECRET", "PYTHON_API_KEY")


@pytest.fixture
def fleet(fleet_factory):
    gateway_port = free_port()
    f = fleet_factory(f"""
services:
  api:
    app: tests.apps.chassis_fastapi:app
    env: {{SPEC_VAR: from-the-spec}}
    env_passthrough: [TEST_PASSED_THROUGH, TEST_NOT_SET_ANYWHERE]
gateway:
  port: {gateway_port}
  routes:
    - {{prefix: /open, service: api, rewrite: /}}
    - {{prefix: /secure, service: api, rewrite: /, auth: {{secret_env: TEST_ROUTE_SECRET}}}}
""", env={**os.environ, **PARENT})
    f.gateway_port = gateway_port
    return f


def environ_of(fleet, service):
    return proc_environ(fleet.service(service)["instances"][0]["pid"])


def call(fleet, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{fleet.port}{path}", data=data,
                                 method=method, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_a_replica_gets_the_allow_list_its_spec_env_and_passthrough_and_no_secret(fleet):
    env = environ_of(fleet, "api")
    assert env["SPEC_VAR"] == "from-the-spec"
    assert env["TEST_PASSED_THROUGH"] == "named-by-env-passthrough"
    assert "TEST_NOT_SET_ANYWHERE" not in env
    assert env["PATH"] == os.environ["PATH"]
    for name in ("LANG", "LC_TIME", "TZ", "PYTHONDONTWRITEBYTECODE", "SHOAL_LOG_LEVEL"):
        assert env[name] == PARENT[name], name
    assert env["SHOAL_SERVICE"] == "api"
    assert env["SHOAL_INSTANCE"] == "api-1"
    assert env["SHOAL_DISCOVERY"] == f"local+http://127.0.0.1:{fleet.port}"
    for name in (*SECRETS, "TEST_ROUTE_SECRET"):
        assert name not in env, name
    # The fleet's token is in no variable at all, under any name.
    pid = fleet.service("api")["instances"][0]["pid"]
    assert fleet.token.encode() not in Path(f"/proc/{pid}/environ").read_bytes()
    assert env["SHOAL_DISCOVERY_TOKEN"] != env["SHOAL_CHAOS_TOKEN"]


def test_the_gateway_gets_the_secret_its_route_names_and_nothing_else(fleet):
    env = environ_of(fleet, "gateway")
    assert env["TEST_ROUTE_SECRET"] == "the-route-hs256-secret"
    for name in (*SECRETS, "TEST_PASSED_THROUGH", "SPEC_VAR"):
        assert name not in env, name
    # ... and it works: it discovers api with its read-only credential and routes to it.
    url = f"http://127.0.0.1:{fleet.gateway_port}/open/hello"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert json.loads(resp.read()) == {"hello": "world"}
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{fleet.gateway_port}/secure/hello", timeout=10)
    info.value.close()
    assert info.value.code == 401


def test_the_discovery_credential_reads_the_registry_and_can_do_nothing_else(fleet):
    token = environ_of(fleet, "api")["SHOAL_DISCOVERY_TOKEN"]
    assert call(fleet, "GET", "/v1/services/api", token) == 200
    assert call(fleet, "GET", "/v1/services/api?index=1&wait=0.1", token) == 200
    for method, path, body in [
        ("GET", "/v1/status", None),
        ("POST", "/v1/services/api/scale", {"replicas": 3}),
        ("POST", "/v1/services/api/restart", None),
        ("POST", "/v1/services/api/kill", None),
        ("GET", "/v1/chaos", None),
        ("POST", "/v1/chaos", {"service": "api", "kind": "errors", "rate": 1}),
        ("DELETE", "/v1/chaos", None),
        ("GET", "/v1/logs", None),
        ("GET", "/v1/metrics", None),
        ("POST", "/v1/shutdown", None),
    ]:
        assert call(fleet, method, path, token, body) == 403, (method, path)
    assert fleet.service("api")["desired"] == 1
    assert fleet.status()["phase"] == "running"
    # No credential at all, or one with non-ASCII characters: 401 (that was a 500).
    assert call(fleet, "GET", "/v1/services/api", "not-a-credential") == 401
    assert call(fleet, "GET", "/v1/services/api", token + "\u00e9") == 401


def test_the_fault_board_credential_reads_the_board_and_can_do_nothing_else(fleet):
    env = environ_of(fleet, "api")
    token = env["SHOAL_CHAOS_TOKEN"]
    assert env["SHOAL_CHAOS"] == "1"
    assert call(fleet, "GET", "/v1/chaos?service=api&instance=api-1", token) == 200
    for method, path, body in [
        ("POST", "/v1/chaos", {"service": "api", "kind": "errors", "rate": 1}),
        ("DELETE", "/v1/chaos", None),
        ("POST", "/v1/services/api/kill", None),
        ("GET", "/v1/services/api", None),
        ("GET", "/v1/status", None),
        ("POST", "/v1/services/api/scale", {"replicas": 0}),
        ("POST", "/v1/shutdown", None),
    ]:
        assert call(fleet, method, path, token, body) == 403, (method, path)
    # The replica's poller does authenticate with it: a fault added with the fleet's token
    # reaches the replica.
    assert fleet.api("POST", "/v1/chaos", {"service": "api", "kind": "errors", "rate": 1,
                                           "status": 503, "for_s": 30})[0] == 201
    url = fleet.service("api")["instances"][0]["url"] + "/hello"

    def faulted():
        try:
            urllib.request.urlopen(url, timeout=5).close()
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code == 503 and exc.headers.get("Shoal-Chaos") == "errors"
        time.sleep(0.1)
        return False

    wait_until(faulted, 15, "the injected fault to reach the replica")
    fleet.api("DELETE", "/v1/chaos")
