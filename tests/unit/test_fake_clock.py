"""shoal.testing.FakeClock: a clock that moves only when the test moves it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.client import BreakerPolicy, BreakerState, CircuitBreaker
from shoal.testing import FakeClock


def test_the_clock_reads_now_and_starts_away_from_zero():
    clock = FakeClock()
    assert clock() == clock.now == 1000.0
    assert FakeClock(5.0)() == 5.0


def test_advance_moves_the_clock_forward_and_returns_the_new_time():
    clock = FakeClock(10.0)
    assert clock.advance(2.5) == 12.5
    assert clock() == 12.5
    clock.now = 100.0  # tests may also set it directly
    assert clock() == 100.0


def test_advance_refuses_to_go_back():
    clock = FakeClock()
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-0.1)
    assert clock() == 1000.0


@given(st.lists(st.floats(min_value=0, max_value=1e6), max_size=30))
def test_readings_never_decrease(steps):
    clock = FakeClock()
    readings = [clock()]
    for step in steps:
        clock.advance(step)
        readings.append(clock())
    assert readings == sorted(readings)


def test_a_policy_with_an_injected_clock_follows_it():
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerPolicy(window_size=2, minimum_calls=2, failure_rate_threshold=50, wait_in_open=30),
        clock=clock,
    )
    for _ in range(2):
        permit = breaker.try_acquire()
        assert permit is not None
        breaker.record(permit, failure=True, duration=0.01)
    assert breaker.state is BreakerState.OPEN
    clock.advance(29)
    assert breaker.try_acquire() is None
    clock.advance(1)
    assert breaker.try_acquire() is not None
