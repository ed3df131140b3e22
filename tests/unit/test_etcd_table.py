"""The pure part of etcd discovery: SHOAL_DISCOVERY parsing, key layout, the endpoint table."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._errors import ConfigurationError
from shoal._registration import advertise_url, start_registration
from shoal._settings import Settings
from shoal.discovery import EndpointTable, EtcdConfig, instance_key, parse_etcd
from shoal.discovery._etcd_table import (
    decode_record,
    encode_record,
    parse_key,
    prefix_range_end,
    reconnect_delay,
)

PREFIX = "/shoal/services/"


def kv(service: str, instance: str, url: str | None, revision: int = 1) -> dict[str, str]:
    key = instance_key(PREFIX, service, instance)
    out = {"key": base64.b64encode(key.encode()).decode(), "mod_revision": str(revision)}
    if url is not None:
        value = encode_record(service=service, instance=instance, url=url)
        out["value"] = base64.b64encode(value).decode()
    return out


def put(service: str, instance: str, url: str, revision: int) -> dict[str, object]:
    return {"kv": kv(service, instance, url, revision)}


def delete(service: str, instance: str, revision: int) -> dict[str, object]:
    return {"type": "DELETE", "kv": kv(service, instance, None, revision)}


def urls(table: EndpointTable, service: str) -> list[str]:
    return [e.url for e in table.endpoints(service)]


# -- the setting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "endpoints", "root"),
    [
        ("etcd+http://127.0.0.1:2379", ("http://127.0.0.1:2379",), "/shoal"),
        ("etcd+http://a:1,b:2, c", ("http://a:1", "http://b:2", "http://c:2379"), "/shoal"),
        ("etcd+http://a:1,b:2/fleet-1/", ("http://a:1", "http://b:2"), "/fleet-1"),
        ("ETCD+HTTP://[::1]:2379/x/y", ("http://[::1]:2379",), "/x/y"),
        ("etcd+http://a:1,a:1", ("http://a:1",), "/shoal"),
    ],
)
def test_etcd_setting_names_members_and_key_root(config, endpoints, root):
    parsed = parse_etcd(config)
    assert parsed == EtcdConfig(endpoints, root)
    assert parsed.prefix == f"{root}/services/"


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("etcd://a:1", "expected etcd+http://"),
        ("etcd+https://a:1", "expected etcd+http://"),
        ("etcd+http://", "no etcd endpoint"),
        ("etcd+http://a:99999", "bad port"),
        ("etcd+http://a:x", "bad port"),
        ("etcd+http://u@a:1", "bad etcd endpoint"),
        ("etcd+http://a:1/x?y", "bad key root"),
        ("etcd+http://a:1,http://b:2", "list members as host:port"),
    ],
)
def test_bad_etcd_setting_fails_naming_the_variable(config, fragment):
    with pytest.raises(ConfigurationError) as info:
        parse_etcd(config)
    assert info.value.setting == "SHOAL_DISCOVERY"
    assert fragment in info.value.message


# -- keys and values ---------------------------------------------------------------------------


@given(st.text(min_size=1), st.text(min_size=1))
def test_any_service_and_instance_name_round_trips_through_its_key(service, instance):
    key = instance_key(PREFIX, service, instance)
    assert key.startswith(PREFIX)
    assert parse_key(PREFIX, key) == (service, instance)


def test_keys_outside_the_layout_are_not_instances():
    assert parse_key(PREFIX, "/other/users/a") is None
    assert parse_key(PREFIX, PREFIX + "users") is None
    assert parse_key(PREFIX, PREFIX + "users/") is None
    assert parse_key(PREFIX, PREFIX + "users/a/b") is None


def test_prefix_range_end_covers_exactly_the_prefix():
    end = base64.b64decode(prefix_range_end("/shoal/services/"))
    assert end == b"/shoal/services0"
    assert b"/shoal/services/zzz" < end <= b"/shoal/services0"
    assert base64.b64decode(prefix_range_end("a")) == b"b"


def test_records_are_json_with_the_url_and_junk_is_no_endpoint():
    value = encode_record(service="users", instance="i-1", url="http://127.0.0.1:8001")
    assert json.loads(value) == {"url": "http://127.0.0.1:8001", "service": "users",
                                 "instance": "i-1"}
    assert decode_record(value).url == "http://127.0.0.1:8001"
    for junk in (b"", b"not json", b"[1]", b'{"URL": "x"}', b'{"url": "ftp://x:1"}'):
        assert decode_record(junk) is None
    with pytest.raises(ConfigurationError):
        encode_record(service="users", instance="i", url="127.0.0.1:8001")


# -- the table ---------------------------------------------------------------------------------


def test_snapshot_groups_instances_by_service_and_reports_changes():
    table = EndpointTable(PREFIX)
    changed = table.reset([kv("users", "b", "http://h:2"), kv("users", "a", "http://h:1"),
                           kv("orders", "a", "http://h:9")], revision=7)
    assert changed == {"users", "orders"}
    assert urls(table, "users") == ["http://h:1", "http://h:2"]  # ordered by instance id
    assert table.services() == ["orders", "users"]
    assert table.revision == 7
    assert len(table) == 3

    changed = table.reset([kv("users", "a", "http://h:1"), kv("users", "b", "http://h:2")], 9)
    assert changed == {"orders"}  # users is unchanged; orders vanished
    assert table.endpoints("orders") == ()


def test_watch_events_add_and_remove_instances():
    table = EndpointTable(PREFIX)
    table.reset([kv("users", "a", "http://h:1")], revision=5)
    assert table.apply([put("users", "b", "http://h:2", 6)]) == {"users"}
    assert urls(table, "users") == ["http://h:1", "http://h:2"]
    assert table.apply([delete("users", "a", 7), delete("users", "b", 8)]) == {"users"}
    assert table.endpoints("users") == ()
    assert table.services() == []
    assert table.revision == 8


def test_one_transactions_events_share_a_revision_and_all_apply():
    table = EndpointTable(PREFIX)
    table.reset([], revision=5)
    table.apply([put("users", "a", "http://h:1", 6), put("users", "b", "http://h:2", 6)])
    assert urls(table, "users") == ["http://h:1", "http://h:2"]


def test_events_the_table_already_reflects_are_ignored():
    table = EndpointTable(PREFIX)
    table.reset([kv("users", "a", "http://h:1")], revision=5)
    assert table.apply([delete("users", "a", 5)]) == set()
    assert urls(table, "users") == ["http://h:1"]


def test_a_keepalive_rewrite_or_unrelated_key_changes_nothing_visible():
    table = EndpointTable(PREFIX)
    table.reset([kv("users", "a", "http://h:1")], revision=5)
    assert table.apply([put("users", "a", "http://h:1", 6)]) == set()
    foreign = {"kv": {"key": base64.b64encode(b"/elsewhere/x").decode(), "mod_revision": "7"}}
    assert table.apply([foreign]) == set()


def test_two_instances_advertising_one_url_are_one_endpoint():
    # A restarted process re-registers the same address while the old lease still runs.
    table = EndpointTable(PREFIX)
    table.reset([kv("users", "old", "http://h:1"), kv("users", "new", "http://h:1")], 3)
    assert urls(table, "users") == ["http://h:1"]
    assert table.apply([delete("users", "old", 4)]) == set()  # still there through "new"


def test_a_value_that_is_not_a_record_removes_the_instance():
    table = EndpointTable(PREFIX)
    table.reset([kv("users", "a", "http://h:1")], revision=5)
    junk = kv("users", "a", None, 6) | {"value": base64.b64encode(b"garbage").decode()}
    assert table.apply([{"kv": junk}]) == {"users"}
    assert table.endpoints("users") == ()


@given(st.integers(min_value=1, max_value=100), st.floats(min_value=0, max_value=0.999))
def test_reconnect_delay_is_full_jitter_capped(attempt, jitter):
    delay = reconnect_delay(attempt, base=0.05, cap=2.0, jitter=jitter)
    assert 0 <= delay <= 2.0
    assert delay <= 0.05 * 2 ** (attempt - 1) + 1e-9
    assert reconnect_delay(0, base=0.05, cap=2.0, jitter=jitter) == 0


# -- the chassis side --------------------------------------------------------------------------


def test_advertised_url_is_the_bound_address_unless_configured(monkeypatch):
    monkeypatch.delenv("SHOAL_ADVERTISE_URL", raising=False)
    assert advertise_url(Settings(host="127.0.0.1"), 8001) == "http://127.0.0.1:8001"
    assert advertise_url(Settings(host="::1"), 8001) == "http://[::1]:8001"
    assert advertise_url(Settings(host="0.0.0.0"), 8001).endswith(":8001")
    configured = Settings(advertise_url="http://10.0.0.7:9000/")
    assert advertise_url(configured, 8001) == "http://10.0.0.7:9000"


def test_bad_advertise_url_fails_naming_the_variable(monkeypatch):
    monkeypatch.setenv("SHOAL_ADVERTISE_URL", "10.0.0.7:9000")
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env()
    assert info.value.setting == "SHOAL_ADVERTISE_URL"


def test_only_etcd_discovery_registers():
    assert start_registration(Settings(discovery="static:users=http://h:1"), port=1) is None
    assert start_registration(Settings(discovery=None), port=1) is None
