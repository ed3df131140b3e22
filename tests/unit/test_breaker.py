"""Circuit breaker state machine: closed, open, half-open, count and time windows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._errors import ConfigurationError
from shoal.client import BreakerPolicy, BreakerState, BreakerTransition, CircuitBreaker
from shoal.testing import FakeClock


def make(**policy):
    clock = FakeClock()
    events: list[BreakerTransition] = []
    breaker = CircuitBreaker(
        BreakerPolicy(**policy), clock=clock, upstream="users", on_transition=events.append
    )
    return clock, breaker, events


def call(breaker, *, failure, duration=0.01):
    permit = breaker.try_acquire()
    assert permit is not None
    breaker.record(permit, failure=failure, duration=duration)


def test_trips_when_failure_rate_reaches_threshold_after_minimum_calls():
    _clock, breaker, events = make(window_size=10, minimum_calls=4, failure_rate_threshold=50)
    call(breaker, failure=True)
    call(breaker, failure=True)
    call(breaker, failure=True)
    assert breaker.state is BreakerState.CLOSED  # 3 < minimum_calls
    call(breaker, failure=False)
    assert breaker.state is BreakerState.OPEN
    assert breaker.try_acquire() is None
    assert events[-1].to_state is BreakerState.OPEN
    assert events[-1].failure_rate == 75.0
    assert events[-1].upstream == "users"


def test_stays_closed_below_threshold():
    _, breaker, _ = make(window_size=10, minimum_calls=4, failure_rate_threshold=50)
    for i in range(40):
        call(breaker, failure=i % 4 == 0)
    assert breaker.state is BreakerState.CLOSED


def test_count_window_forgets_old_calls():
    _, breaker, _ = make(window_size=4, minimum_calls=4, failure_rate_threshold=75)
    call(breaker, failure=True)
    call(breaker, failure=True)
    for _ in range(4):
        call(breaker, failure=False)
    call(breaker, failure=True)
    call(breaker, failure=True)
    assert breaker.state is BreakerState.CLOSED  # 2 of the last 4


def test_slow_calls_trip_it():
    _, breaker, events = make(
        minimum_calls=2, slow_call_rate_threshold=50, slow_call_duration=1.0
    )
    call(breaker, failure=False, duration=2.0)
    call(breaker, failure=False, duration=2.0)
    assert breaker.state is BreakerState.OPEN
    assert events[-1].slow_call_rate == 100.0


def test_time_window_counts_only_recent_seconds():
    clock, breaker, _ = make(
        window="time", window_size=5, minimum_calls=4, failure_rate_threshold=50
    )
    for _ in range(3):
        call(breaker, failure=True)
    clock.now += 10  # those failures age out
    for _ in range(3):
        call(breaker, failure=False)
    call(breaker, failure=True)
    assert breaker.state is BreakerState.CLOSED


def test_open_waits_then_half_open_probes_close_it():
    clock, breaker, events = make(
        minimum_calls=2, wait_in_open=5, half_open_probes=2, failure_rate_threshold=50
    )
    call(breaker, failure=True)
    call(breaker, failure=True)
    assert breaker.retry_after() == 5
    clock.now += 4.9
    assert breaker.try_acquire() is None
    clock.now += 0.1
    first = breaker.try_acquire()
    second = breaker.try_acquire()
    assert breaker.state is BreakerState.HALF_OPEN
    assert first is not None
    assert second is not None
    assert breaker.try_acquire() is None  # only two probes
    breaker.record(first, failure=False, duration=0.01)
    breaker.record(second, failure=False, duration=0.01)
    assert breaker.state is BreakerState.CLOSED
    assert [e.to_state for e in events] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_failed_probes_reopen_it():
    clock, breaker, _ = make(minimum_calls=1, wait_in_open=5, half_open_probes=1)
    call(breaker, failure=True)
    clock.now += 5
    call(breaker, failure=True)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 5


def test_stale_permits_from_before_a_transition_are_ignored():
    clock, breaker, _ = make(minimum_calls=1, wait_in_open=5, half_open_probes=1)
    stale = breaker.try_acquire()
    call(breaker, failure=True)
    clock.now += 5
    probe = breaker.try_acquire()
    assert stale is not None
    assert probe is not None
    breaker.record(stale, failure=False, duration=0.01)  # must not count as the probe
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record(probe, failure=False, duration=0.01)
    assert breaker.state is BreakerState.CLOSED


def test_released_probe_frees_its_slot():
    clock, breaker, _ = make(minimum_calls=1, wait_in_open=5, half_open_probes=1)
    call(breaker, failure=True)
    clock.now += 5
    probe = breaker.try_acquire()
    assert probe is not None
    assert breaker.try_acquire() is None
    breaker.release(probe)
    assert breaker.try_acquire() is not None


@pytest.mark.parametrize(
    ("setting", "kwargs"),
    [
        ("breaker.window", {"window": "sliding"}),
        ("breaker.window_size", {"window_size": 0}),
        ("breaker.minimum_calls", {"minimum_calls": 0}),
        ("breaker.half_open_probes", {"half_open_probes": 0}),
        ("breaker.failure_rate_threshold", {"failure_rate_threshold": 0}),
        ("breaker.slow_call_rate_threshold", {"slow_call_rate_threshold": 120}),
        ("breaker.wait_in_open", {"wait_in_open": -1}),
        ("breaker.slow_call_duration", {"slow_call_duration": 0}),
    ],
)
def test_bad_policy_names_the_setting(setting, kwargs):
    with pytest.raises(ConfigurationError) as info:
        BreakerPolicy(**kwargs)
    assert info.value.setting == setting


@settings(max_examples=300)
@given(
    probes=st.integers(min_value=1, max_value=4),
    window=st.sampled_from(["count", "time"]),
    ops=st.lists(
        st.sampled_from(["acquire", "ok", "fail", "slow", "release", "tick", "wait"]),
        max_size=150,
    ),
)
def test_half_open_never_admits_more_than_its_probes(probes, window, ops):
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerPolicy(
            window=window,
            window_size=5,
            minimum_calls=2,
            wait_in_open=3,
            half_open_probes=probes,
            slow_call_duration=1.0,
            slow_call_rate_threshold=50,
        ),
        clock=clock,
    )
    held: list[int] = []
    admitted_in_half_open = 0
    for op in ops:
        if op == "acquire":
            before = breaker.state
            permit = breaker.try_acquire()
            if permit is not None:
                held.append(permit)
                if breaker.state is BreakerState.HALF_OPEN:
                    if before is not BreakerState.HALF_OPEN:
                        admitted_in_half_open = 0
                    admitted_in_half_open += 1
        elif op in ("ok", "fail", "slow") and held:
            breaker.record(
                held.pop(0), failure=op == "fail", duration=2.0 if op == "slow" else 0.01
            )
        elif op == "release" and held:
            breaker.release(held.pop(0))
            if breaker.state is BreakerState.HALF_OPEN:
                admitted_in_half_open = max(0, admitted_in_half_open - 1)
        elif op == "tick":
            clock.now += 1
        elif op == "wait":
            clock.now += 3
        if breaker.state is not BreakerState.HALF_OPEN:
            admitted_in_half_open = 0
        assert admitted_in_half_open <= probes
