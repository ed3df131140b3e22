import asyncio

from hypothesis import given
from hypothesis import strategies as st

from shoal.platform._backoff import RestartBackoff
from shoal.platform._environ import inherited
from shoal.platform._registry import READY, UNREADY, InstanceRecord, Registry
from shoal.testing import FakeClock


def test_restart_delay_doubles_up_to_the_maximum():
    backoff = RestartBackoff(base=0.5, factor=2, maximum=4, reset_after=60)
    backoff.started(0.0)
    assert [backoff.delay(t) for t in (1.0, 2.0, 3.0, 4.0, 5.0)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_a_replica_that_stayed_up_starts_over_at_the_base_delay():
    backoff = RestartBackoff(base=0.5, reset_after=60)
    backoff.started(0.0)
    backoff.delay(1.0)
    backoff.delay(2.0)
    backoff.started(3.0)
    assert backoff.delay(100.0) == 0.5


def test_crash_loop_needs_three_crashes_within_the_window():
    backoff = RestartBackoff(loop_crashes=3, loop_window=60)
    backoff.delay(0.0)
    backoff.delay(10.0)
    assert not backoff.crash_looping
    backoff.delay(20.0)
    assert backoff.crash_looping
    backoff.delay(200.0)
    assert not backoff.crash_looping


def test_the_reset_needs_the_full_uptime_measured_on_the_clock_passed_in():
    clock = FakeClock()
    backoff = RestartBackoff(base=0.5, reset_after=60)
    backoff.started(clock())
    clock.advance(1)
    assert backoff.delay(clock()) == 0.5
    backoff.started(clock())
    clock.advance(59.9)
    assert backoff.delay(clock()) == 1.0  # up 59.9 s: still backing off
    backoff.started(clock())
    clock.advance(60)
    assert backoff.delay(clock()) == 0.5  # up 60 s: starts over


def test_a_replica_that_crash_loops_for_thousands_of_restarts_still_waits_the_maximum():
    backoff = RestartBackoff(base=0.5, maximum=30, loop_window=1)
    delays = [backoff.delay(float(t)) for t in range(5000)]
    assert delays[-1] == 30
    assert max(delays) == 30


@given(st.lists(st.floats(min_value=0, max_value=10_000), max_size=50))
def test_delay_is_always_within_base_and_maximum(times):
    backoff = RestartBackoff(base=0.5, maximum=30)
    for t in sorted(times):
        assert 0.5 <= backoff.delay(t) <= 30


async def test_only_ready_instances_are_endpoints_and_every_change_bumps_the_index():
    registry = Registry()
    a = InstanceRecord(id="users-1", service="users", port=8001)
    b = InstanceRecord(id="users-2", service="users", port=8002)
    start = registry.index
    await registry.upsert(a)
    await registry.upsert(b)
    assert registry.endpoints("users") == []
    await registry.set_state("users-2", READY)
    assert registry.endpoints("users") == ["http://127.0.0.1:8002"]
    await registry.set_state("users-2", UNREADY)
    assert registry.endpoints("users") == []
    assert registry.index == start + 4


async def test_blocking_query_returns_as_soon_as_something_changes():
    registry = Registry()
    index = registry.index
    waiter = asyncio.create_task(registry.wait(index, 10))
    await asyncio.sleep(0)
    assert not waiter.done()
    await registry.upsert(InstanceRecord(id="x-1", service="x", port=1))
    assert await asyncio.wait_for(waiter, 1) == index + 1


async def test_blocking_query_times_out_with_the_same_index():
    registry = Registry()
    assert await registry.wait(registry.index, 0.05) == registry.index


def test_a_replica_inherits_the_allow_list_and_its_passthrough_only():
    parent = {
        "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
        "TMPDIR": "/tmp/x", "SSL_CERT_FILE": "/etc/ca.pem", "VIRTUAL_ENV": "/venv",
        "PYTHONPATH": "/src", "PYTHONHASHSEED": "0", "COVERAGE_PROCESS_START": ".coveragerc",
        "LD_LIBRARY_PATH": "/opt/lib", "SHOAL_LOG_LEVEL": "DEBUG",
        # never, unless named
        "SHOAL_CONTROL_TOKEN": "admin", "SHOAL_JWT_SECRET": "jwt", "AWS_SECRET_ACCESS_KEY": "k",
        "PYTHON_API_KEY": "k", "DATABASE_URL": "postgresql://u:p@db/x", "HTTPS_PROXY": "p",
        "SHOAL_ADVERTISE_URL": "http://10.0.0.1:1", "LC_lower": "x",
    }
    kept = inherited(parent)
    assert set(kept) == {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SSL_CERT_FILE",
                         "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHASHSEED",
                         "COVERAGE_PROCESS_START", "LD_LIBRARY_PATH", "SHOAL_LOG_LEVEL"}
    assert kept["PATH"] == "/usr/bin"
    named = inherited(parent, ["DATABASE_URL", "SHOAL_JWT_SECRET", "NOT_SET"])
    assert set(named) - set(kept) == {"DATABASE_URL", "SHOAL_JWT_SECRET"}
