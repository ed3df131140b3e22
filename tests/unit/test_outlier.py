"""Outlier detection: consecutive failures eject an instance, for growing, bounded times."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._errors import ConfigurationError
from shoal.client import InstanceTable, OutlierDetector, OutlierPolicy
from shoal.testing import FakeClock


def make(n: int, **policy):
    clock = FakeClock()
    table = InstanceTable(f"http://127.0.0.1:{8000 + i}" for i in range(n))
    return clock, table, OutlierDetector(table, OutlierPolicy(**policy), clock=clock)


def test_consecutive_failures_eject_and_a_success_resets_the_streak():
    clock, table, detector = make(3, consecutive_failures=3, base_ejection_time=10)
    inst = table.instances[0]
    detector.record_failure(inst)
    detector.record_failure(inst)
    detector.record_success(inst)
    assert detector.record_failure(inst) is None
    assert detector.record_failure(inst) is None
    event = detector.record_failure(inst)
    assert event is not None
    assert event.ejected
    assert event.duration == 10
    assert inst.is_ejected(clock.now)
    assert not inst.is_ejected(clock.now + 10)


def test_ejection_time_grows_with_each_ejection_up_to_the_maximum():
    clock, table, detector = make(
        2, consecutive_failures=1, base_ejection_time=10, max_ejection_time=25
    )
    inst = table.instances[0]
    durations = []
    for _ in range(3):
        event = detector.record_failure(inst)
        assert event is not None
        durations.append(event.duration)
        clock.now = inst.ejected_until  # back in, and fails again at once
    assert durations == [10, 20, 25]


def test_ejection_multiplier_decays_while_healthy():
    clock, table, detector = make(2, consecutive_failures=1, base_ejection_time=10)
    inst = table.instances[0]
    detector.record_failure(inst)
    clock.now = inst.ejected_until
    detector.record_failure(inst)  # multiplier 2
    clock.now = inst.ejected_until + 100  # ten base periods healthy
    event = detector.record_failure(inst)
    assert event is not None
    assert event.duration == 10


def test_success_from_an_ejected_instance_returns_it():
    clock, table, detector = make(2, consecutive_failures=1)
    inst = table.instances[0]
    detector.record_failure(inst)
    assert inst.is_ejected(clock.now)
    event = detector.record_success(inst)
    assert event is not None
    assert not event.ejected
    assert not inst.is_ejected(clock.now)


def test_single_instance_is_never_ejected():
    clock, table, detector = make(1, consecutive_failures=1, max_ejection_percent=50)
    for _ in range(5):
        assert detector.record_failure(table.instances[0]) is None
    assert table.ejected_count(clock.now) == 0


def test_shrinking_membership_returns_ejected_instances_over_the_cap():
    clock, table, detector = make(4, consecutive_failures=1, max_ejection_percent=50)
    a, b, _c, _d = table.instances
    detector.record_failure(a)
    detector.record_failure(b)
    assert table.ejected_count(clock.now) == 2
    table.update([a.url, b.url])
    events = detector.enforce_limit()
    assert len(events) == 1
    assert table.ejected_count(clock.now) == 1


@pytest.mark.parametrize(
    ("setting", "kwargs"),
    [
        ("outlier.consecutive_failures", {"consecutive_failures": 0}),
        ("outlier.base_ejection_time", {"base_ejection_time": 0}),
        ("outlier.max_ejection_time", {"base_ejection_time": 10, "max_ejection_time": 5}),
        ("outlier.max_ejection_percent", {"max_ejection_percent": 101}),
    ],
)
def test_bad_policy_names_the_setting(setting, kwargs):
    with pytest.raises(ConfigurationError) as info:
        OutlierPolicy(**kwargs)
    assert info.value.setting == setting


@settings(max_examples=200)
@given(
    n=st.integers(min_value=1, max_value=10),
    percent=st.sampled_from([0.0, 10.0, 33.0, 50.0, 75.0, 100.0]),
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=9),
            st.sampled_from(["fail", "ok", "tick"]),
        ),
        max_size=200,
    ),
)
def test_ejected_instances_never_exceed_the_maximum_percentage(n, percent, steps):
    clock, table, detector = make(
        n, consecutive_failures=2, base_ejection_time=3, max_ejection_percent=percent
    )
    limit = int(n * percent / 100 + 1e-9)
    for index, action in steps:
        inst = table.instances[index % n]
        if action == "fail":
            detector.record_failure(inst)
        elif action == "ok":
            detector.record_success(inst)
        else:
            clock.now += 1
        assert table.ejected_count(clock.now) <= limit
