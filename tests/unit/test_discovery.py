"""The discovery seam: SHOAL_DISCOVERY parsing and pushed endpoint tables."""

from __future__ import annotations

import asyncio
import threading

import pytest

from shoal._errors import ConfigurationError
from shoal.client import AsyncClient, MockTransport, Response
from shoal.discovery import (
    Endpoint,
    StaticResolver,
    register_scheme,
    resolver_from_config,
    resolver_from_env,
)
from shoal.discovery._dns import DnsOptions, DnsResolver


def test_static_config_lists_each_services_endpoints():
    resolver = resolver_from_config(
        "static:users=http://127.0.0.1:8001, http://127.0.0.1:8002;orders=http://127.0.0.1:9001"
    )
    assert isinstance(resolver, StaticResolver)
    assert [e.url for e in resolver.endpoints("users")] == [
        "http://127.0.0.1:8001",
        "http://127.0.0.1:8002",
    ]
    assert [e.url for e in resolver.endpoints("orders")] == ["http://127.0.0.1:9001"]


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("consul://x", "unknown discovery scheme 'consul'"),
        ("", "is empty"),
        ("static:users", "expected service=url"),
        ("static:users=", "has no endpoints"),
        ("static:users=127.0.0.1:8001", "expected http(s)://host:port"),
        ("static:users=http://a:1;users=http://b:1", "listed twice"),
    ],
)
def test_bad_config_fails_naming_the_setting(config, fragment):
    with pytest.raises(ConfigurationError) as info:
        resolver_from_config(config)
    assert info.value.setting == "SHOAL_DISCOVERY"
    assert fragment in str(info.value)


def test_env_selects_the_backend(monkeypatch):
    monkeypatch.setenv("SHOAL_DISCOVERY", "static:users=http://127.0.0.1:8001")
    assert resolver_from_env().endpoints("users") == (Endpoint("http://127.0.0.1:8001"),)  # type: ignore[attr-defined]
    monkeypatch.delenv("SHOAL_DISCOVERY")
    with pytest.raises(ConfigurationError, match="SHOAL_DISCOVERY"):
        resolver_from_env()


def test_local_discovery_takes_the_read_only_credential_else_the_fleet_token(monkeypatch):
    monkeypatch.setenv("SHOAL_DISCOVERY", "local+http://127.0.0.1:7700")
    monkeypatch.setenv("SHOAL_DISCOVERY_TOKEN", "registry-reader")
    monkeypatch.setenv("SHOAL_CONTROL_TOKEN", "admin")
    assert resolver_from_env().token == "registry-reader"  # type: ignore[attr-defined]
    monkeypatch.delenv("SHOAL_DISCOVERY_TOKEN")
    assert resolver_from_env().token == "admin"  # type: ignore[attr-defined]
    monkeypatch.delenv("SHOAL_CONTROL_TOKEN")
    with pytest.raises(ConfigurationError, match="SHOAL_DISCOVERY_TOKEN"):
        resolver_from_env()


def test_registered_scheme_is_dispatched_on_its_prefix():
    seen = []

    def factory(config: str) -> StaticResolver:
        seen.append(config)
        return StaticResolver()

    register_scheme("testreg", factory)
    resolver_from_config("testreg+http://127.0.0.1:7700")
    assert seen == ["testreg+http://127.0.0.1:7700"]


def test_subscribers_get_the_table_at_once_and_every_change_until_cancelled():
    resolver = StaticResolver({"users": ["http://127.0.0.1:8001"]})
    tables: list[list[str]] = []
    subscription = resolver.subscribe("users", lambda t: tables.append([e.url for e in t]))
    resolver.set_endpoints("users", ["http://127.0.0.1:8002"])
    subscription.cancel()
    resolver.set_endpoints("users", ["http://127.0.0.1:8003"])
    assert tables == [["http://127.0.0.1:8001"], ["http://127.0.0.1:8002"]]


def test_unknown_service_starts_empty():
    tables = []
    StaticResolver().subscribe("nobody", tables.append)
    assert tables == [()]


async def test_a_dns_update_is_applied_on_the_clients_loop_not_on_the_resolvers_thread():
    # The resolver calls its listeners on its own thread; the client applies the update on
    # its loop. The loop is kept busy here while the resolver delivers.
    answers = {"users": ["127.0.0.1"]}
    resolver = DnsResolver(DnsOptions(port=8001, interval=0.05, min_interval=0.01),
                           lookup=lambda name: (list(answers[name]), 0.0))
    client = AsyncClient(service="dns-tests", resolver=resolver,
                         transport=MockTransport(lambda r: Response(200, instance=r.instance)))
    assert (await client.get("http://users/x")).instance == "http://127.0.0.1:8001"
    table = client.upstream("users").table
    seen: list[tuple[str, list[str]]] = []
    delivered = threading.Event()

    def after_the_client(endpoints) -> None:  # (listeners are called in subscription order)
        if [e.url for e in endpoints] == ["http://127.0.0.2:8001"]:
            seen.append((threading.current_thread().name, [i.url for i in table.instances]))
            delivered.set()

    resolver.subscribe("users", after_the_client)
    answers["users"] = ["127.0.0.2"]
    assert delivered.wait(5)  # (blocks the loop: nothing can run on it meanwhile)
    assert seen == [("shoal-dns", ["http://127.0.0.1:8001"])]  # not applied on that thread
    await asyncio.sleep(0)
    assert [i.url for i in table.instances] == ["http://127.0.0.2:8001"]
    resolver.close()
    await client.aclose()
