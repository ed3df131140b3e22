"""Fixtures for the etcd discovery tests: real etcd members, resolvers, served instances."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shoal.discovery import EtcdResolver
from shoal.testing import (
    ServerProcess,
    wait_until,  # noqa: F401 - re-exported to the tests here
)

from .cluster import ETCD, EtcdCluster, etcd_available

#: Lease TTL of the served instances under test: etcd's minimum here is 1 s; 2 s leaves room
#: for a keep-alive (every TTL/3) delayed by this noisy 2-core machine.
TTL = 2
BACKEND = "tests.apps.backend:app"


def _require_etcd() -> None:
    if etcd_available():
        return
    reason = f"etcd server binary not found ({ETCD or '/usr/bin/etcd'}): apt install etcd-server"
    if os.environ.get("SHOAL_REQUIRE_EXTERNAL") == "1":
        pytest.fail(f"SHOAL_REQUIRE_EXTERNAL=1 but {reason}")
    pytest.skip(reason)



def holds_for(predicate: Callable[[], Any], seconds: float, what: str,
              interval: float = 0.02) -> None:
    """Assert ``predicate`` stays true for a whole window of ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert predicate(), f"{what} (stopped holding before {seconds}s)"
        time.sleep(interval)


@pytest.fixture(scope="session")
def etcd_single(tmp_path_factory) -> Iterator[EtcdCluster]:
    """One single-member etcd for the whole session (tests isolate themselves by key root)."""
    _require_etcd()
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


@pytest.fixture
def etcd_factory(tmp_path) -> Iterator[Callable[[int], EtcdCluster]]:
    """``etcd_factory(size)`` → a fresh started cluster, killed at teardown."""
    _require_etcd()
    clusters: list[EtcdCluster] = []

    def make(size: int) -> EtcdCluster:
        cluster = EtcdCluster(size, tmp_path)
        clusters.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()


@pytest.fixture
def root() -> str:
    """A key root of this test's own (``/t-1a2b3c4d``)."""
    return f"/t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def resolvers() -> Iterator[Callable[..., EtcdResolver]]:
    """``resolvers(config, **kwargs)`` → a started resolver, closed at teardown."""
    made: list[EtcdResolver] = []

    def make(config: str, **kwargs: Any) -> EtcdResolver:
        resolver = EtcdResolver(config, **kwargs)
        made.append(resolver)
        return resolver

    try:
        yield make
    finally:
        for resolver in made:
            resolver.close()


@pytest.fixture
def servers() -> Iterator[Callable[..., ServerProcess]]:
    """``servers(target, discovery=..., service=..., start=True, **env)`` → a served instance
    registered through ``discovery``; stopped (then its group SIGKILLed) at teardown."""
    made: list[ServerProcess] = []

    def make(target: str, *, discovery: str, service: str, start: bool = True,
             **env: str) -> ServerProcess:
        server = ServerProcess(target, service=service, env={
            "SHOAL_DISCOVERY": discovery, "SHOAL_REGISTRATION_TTL": str(TTL),
            "SHOAL_DRAIN_GRACE": "2", "SHOAL_INSTANCE": f"{service}-{uuid.uuid4().hex[:6]}",
            **env,
        })
        made.append(server)
        return server.start(timeout=30) if start else server

    try:
        yield make
    finally:
        for server in reversed(made):
            if server.process is not None:
                server.stop(timeout=10)
