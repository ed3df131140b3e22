"""etcd discovery against one real etcd member: registration, watch, drain, kill -9, restarts."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shoal.client import Client
from shoal.discovery import EtcdClient, EtcdResolver, instance_key

from .conftest import BACKEND, TTL, holds_for, wait_until

pytestmark = pytest.mark.integration

APPS = {
    "fastapi": "tests.apps.chassis_fastapi:app",  # uvicorn
    "flask": "tests.apps.chassis_flask:app",  # gunicorn gthread worker
}


def urls(resolver: EtcdResolver, service: str) -> list[str]:
    return sorted(e.url for e in resolver.endpoints(service))


def events(server) -> list[str]:
    return [line.get("event", "") for line in server.log_lines()]


@pytest.mark.parametrize("framework", sorted(APPS))
def test_served_instance_registers_when_ready_and_leaves_first_thing_on_drain(
        framework, etcd_single, root, resolvers, servers):
    discovery = etcd_single.discovery(root)
    resolver = resolvers(discovery)
    assert resolver.wait_synced(5)
    pushed: list[list[str]] = []
    resolver.subscribe("users", lambda endpoints: pushed.append([e.url for e in endpoints]))
    server = servers(APPS[framework], discovery=discovery, service="users",
                     SHOAL_DRAIN_DELAY="3")

    wait_until(lambda: urls(resolver, "users") == [server.url], 10, "the instance registered")
    with EtcdClient(etcd_single.endpoints()) as etcd:
        kvs, _ = etcd.range_prefix(f"{root}/services/users/")
    assert len(kvs) == 1
    record = json.loads(base64.b64decode(kvs[0]["value"]))
    assert record["url"] == server.url
    assert record["service"] == "users"
    assert base64.b64decode(kvs[0]["key"]).decode() == instance_key(
        f"{root}/services/", "users", record["instance"])
    assert int(kvs[0]["lease"]) != 0  # dies with the process's lease

    server.terminate()
    wait_until(lambda: urls(resolver, "users") == [], 2, "the instance deregistered on SIGTERM")
    # Still inside the 3 s drain delay: it serves, only readiness fails. The registry entry was
    # removed before anything else of the drain happened.
    assert server.get_status("/livez") == 200
    assert server.get_status("/readyz") == 503
    assert server.wait(15) == 0
    log = events(server)
    assert log.index("registration.removed") < log.index("drain.started")
    assert pushed[0] == []  # subscribed before it registered
    assert [server.url] in pushed
    assert pushed[-1] == []


def test_killed_instance_disappears_when_its_lease_expires(etcd_single, root, resolvers, servers):
    discovery = etcd_single.discovery(root)
    resolver = resolvers(discovery)
    server = servers(BACKEND, discovery=discovery, service="users")
    wait_until(lambda: urls(resolver, "users") == [server.url], 10, "the instance registered")

    server.kill()  # SIGKILL: no drain, no revoke
    killed = time.monotonic()
    assert urls(resolver, "users") == [server.url]  # only the lease knows it is gone
    wait_until(lambda: urls(resolver, "users") == [], TTL + 3, "removal after lease expiry")
    elapsed = time.monotonic() - killed
    # Renewed at most TTL/3 before the kill, so it outlived the process by about 2/3 TTL+.
    assert TTL / 3 < elapsed < TTL + 3


def test_instance_is_registered_only_while_it_is_ready(etcd_single, root, resolvers, servers,
                                                       tmp_path):
    discovery = etcd_single.discovery(root)
    resolver = resolvers(discovery)
    marker = tmp_path / "not-ready"
    marker.touch()
    server = servers(APPS["fastapi"], discovery=discovery, service="users",
                     TEST_NOT_READY_FILE=str(marker))
    assert server.get_status("/readyz") == 503
    holds_for(lambda: urls(resolver, "users") == [], 1.0, "a not-ready instance stays out")

    marker.unlink()
    wait_until(lambda: urls(resolver, "users") == [server.url], 5, "registered once ready")
    marker.touch()
    wait_until(lambda: urls(resolver, "users") == [], 5, "withdrawn when readiness fails")
    marker.unlink()
    wait_until(lambda: urls(resolver, "users") == [server.url], 5, "back when ready again")


def test_client_started_after_registrations_sees_every_instance(etcd_single, root, resolvers,
                                                                 servers):
    discovery = etcd_single.discovery(root)
    backends = [servers(BACKEND, discovery=discovery, service="users", start=False)
                for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda s: s.start(timeout=30), backends))
    with EtcdClient(etcd_single.endpoints()) as etcd:
        # A larger neighbour, registered directly (as the platform or another fleet would).
        for i in range(200):
            etcd.put(instance_key(f"{root}/services/", "orders", f"o-{i}"),
                     json.dumps({"url": f"http://127.0.0.1:{20000 + i}"}).encode())
        wait_until(lambda: len(etcd.range_prefix(f"{root}/services/users/")[0]) == 3, 10,
                   "all three instances registered")

    resolver = resolvers(discovery)
    assert resolver.wait_synced(5)
    assert urls(resolver, "users") == sorted(s.url for s in backends)
    assert len(resolver.endpoints("orders")) == 200
    with Client(service="tester", resolver=resolver) as client:
        ports = {client.get("http://users/whoami").json()["port"] for _ in range(60)}
    assert ports == {str(s.port) for s in backends}


def test_watch_and_keepalive_resume_after_etcd_restarts(etcd_factory, root, resolvers, servers):
    cluster = etcd_factory(1)
    discovery = cluster.discovery(root)
    resolver = resolvers(discovery)
    first = servers(BACKEND, discovery=discovery, service="users")
    wait_until(lambda: urls(resolver, "users") == [first.url], 10, "the instance registered")

    cluster.kill(0)
    # Discovery down: the last known table stays (fail static), requests keep flowing.
    assert urls(resolver, "users") == [first.url]
    cluster.restart(0)

    second = servers(BACKEND, discovery=discovery, service="users")
    wait_until(lambda: urls(resolver, "users") == sorted([first.url, second.url]), 10,
               "the watch resumed and saw the new instance")
    # The first instance's keep-alive resumed too: its lease does not lapse.
    holds_for(lambda: first.url in urls(resolver, "users"), 2 * TTL, "first stays registered")
