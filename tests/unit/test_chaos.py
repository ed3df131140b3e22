"""Fault injection cores: rule decisions, wire format, the control plane's board; load checks."""

from __future__ import annotations

import pytest

from shoal._chaos import (
    NO_FAULT,
    ChaosPoller,
    FaultRule,
    control_url_from_env,
    decide,
    poller_from_env,
)
from shoal._errors import ConfigurationError
from shoal.platform._faults import FaultBoard
from shoal.platform._load import LoadPlan, check_loopback, percentile


def rule(kind: str, **kw: object) -> FaultRule:
    return FaultRule(kind=kind, expires_at=kw.pop("expires_at", 100.0), **kw)  # type: ignore[arg-type]


def test_no_rules_means_no_fault():
    assert decide((), 0.0, lambda: 0.0) is NO_FAULT


def test_latencies_add_up_and_errors_answer_with_their_status():
    d = decide([rule("latency", latency_ms=200), rule("latency", latency_ms=50),
                rule("errors", status=502)], 10.0, lambda: 0.0)
    assert (d.delay, d.status, d.abort) == (0.25, 502, False)


def test_abort_wins_over_an_error_answer():
    d = decide([rule("errors"), rule("abort")], 10.0, lambda: 0.0)
    assert (d.status, d.abort) == (None, True)


def test_expired_rules_are_ignored():
    assert decide([rule("abort", expires_at=5.0)], 5.0, lambda: 0.0) is NO_FAULT


def test_rate_samples_requests():
    r = [rule("errors", rate=0.3)]
    assert decide(r, 0.0, lambda: 0.29).status == 503
    assert decide(r, 0.0, lambda: 0.31) is NO_FAULT


def test_wire_rules_expire_on_the_replica_clock_and_are_validated():
    r = FaultRule.from_wire({"kind": "latency", "latency_ms": 5, "expires_in": 3}, now=50.0)
    assert (r.expires_at, r.latency_ms, r.instance) == (53.0, 5.0, None)
    with pytest.raises(ValueError, match="kind"):
        FaultRule.from_wire({"kind": "melt", "expires_in": 1}, now=0)
    with pytest.raises(ValueError, match="range"):
        FaultRule.from_wire({"kind": "errors", "rate": 2, "expires_in": 1}, now=0)


def test_chaos_is_off_unless_the_env_says_so():
    assert poller_from_env("users", "users-1", {}) is None
    p = poller_from_env("users", "users-1", {"SHOAL_CHAOS": "1",
                                              "SHOAL_DISCOVERY": "local+http://127.0.0.1:7700"})
    assert p is not None
    assert p.control_url == "http://127.0.0.1:7700"


def test_the_poller_uses_the_read_only_fault_board_credential():
    env = {"SHOAL_CHAOS": "1", "SHOAL_CONTROL_URL": "http://127.0.0.1:9",
           "SHOAL_CHAOS_TOKEN": "board-reader", "SHOAL_CONTROL_TOKEN": "admin"}
    poller = poller_from_env("users", "users-1", env)
    assert poller is not None
    assert poller.token == "board-reader"
    del env["SHOAL_CHAOS_TOKEN"]  # a process outside the fleet, given the fleet's token
    poller = poller_from_env("users", "users-1", env)
    assert poller is not None
    assert poller.token == "admin"


def test_control_url_prefers_the_explicit_variable():
    env = {"SHOAL_CONTROL_URL": "http://127.0.0.1:9/", "SHOAL_DISCOVERY": "etcd+http://x:2379"}
    assert control_url_from_env(env) == "http://127.0.0.1:9"
    assert control_url_from_env({"SHOAL_DISCOVERY": "etcd+http://x:2379"}) is None


def test_poller_without_a_control_plane_injects_nothing():
    p = ChaosPoller(service="s", instance="i", control_url=None)
    assert p.decision() is NO_FAULT


def test_board_scopes_faults_by_service_and_instance_and_expires_them():
    now = [0.0]
    board = FaultBoard(clock=lambda: now[0])
    board.add("users", "latency", 10, latency_ms=100)
    board.add("users", "abort", 5, instance="users-2")
    board.add("orders", "errors", 10, status=500)
    assert [f.kind for f in board.active("users", "users-1")] == ["latency"]
    assert [f.kind for f in board.active("users", "users-2")] == ["latency", "abort"]
    wire = board.active("orders")[0].wire(now[0])
    assert (wire["expires_in"], wire["status"]) == (10.0, 500)
    now[0] = 6.0
    assert [f.kind for f in board.active("users", "users-2")] == ["latency"]
    assert board.clear("users") == 1
    assert board.clear() == 1
    assert board.active() == []


@pytest.mark.parametrize(("kind", "kw", "field"), [
    ("latency", {"latency_ms": 0}, "latency_ms"),
    ("errors", {"status": 200}, "status"),
    ("abort", {"rate": 1.5}, "rate"),
    ("nope", {}, "kind"),
])
def test_board_rejects_bad_faults(kind, kw, field):
    with pytest.raises(ValueError, match=field):
        FaultBoard().add("users", kind, 10, **kw)


def test_board_faults_are_always_time_bounded():
    with pytest.raises(ValueError, match="for_s"):
        FaultBoard().add("users", "abort", 0)
    with pytest.raises(ValueError, match="for_s"):
        FaultBoard().add("users", "abort", 10_000)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/x", "http://localhost/", "http://[::1]:1/",
                                 "http://127.1.2.3/"])
def test_load_accepts_loopback(url):
    check_loopback(url)


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://example.com/", "ftp://127.0.0.1/"])
def test_load_refuses_anything_but_loopback(url):
    with pytest.raises(ConfigurationError, match="url"):
        check_loopback(url)


def test_load_is_bounded():
    with pytest.raises(ConfigurationError, match="duration"):
        LoadPlan(url="http://127.0.0.1/", rate=10, duration=601)
    with pytest.raises(ConfigurationError, match="rate"):
        LoadPlan(url="http://127.0.0.1/", rate=0, duration=1)


def test_percentile_is_nearest_rank():
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile([], 0.5)) == (
        50.0, 99.0, None)
