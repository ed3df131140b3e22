"""The shared exponential backoff: capped, non-decreasing, full jitter under the ceiling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._backoff import exponential, full_jitter

bases = st.floats(min_value=1e-6, max_value=100)
caps = st.floats(min_value=0, max_value=1e6)
steps = st.integers(min_value=0, max_value=10_000)
jitters = st.floats(min_value=0, max_value=1, exclude_max=True)


def test_exponential_starts_at_the_base_and_doubles_up_to_the_cap():
    assert [exponential(k, base=0.1, cap=2.0) for k in range(7)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    )
    assert [exponential(k, base=0.5, cap=30, factor=3) for k in range(4)] == [0.5, 1.5, 4.5, 13.5]


def test_the_exponent_levels_off_at_max_step_even_below_the_cap():
    assert exponential(10, base=0.001, cap=100, max_step=10) == pytest.approx(1.024)
    assert exponential(50, base=0.001, cap=100, max_step=10) == pytest.approx(1.024)


def test_a_huge_failure_count_waits_the_cap_instead_of_overflowing():
    assert exponential(10**6, base=0.5, cap=30) == 30
    assert full_jitter(10**6, base=0.5, cap=30, jitter=0.5) == 15


@given(step=steps, base=bases, cap=caps)
def test_exponential_stays_within_zero_and_the_cap(step, base, cap):
    assert 0 <= exponential(step, base=base, cap=cap) <= cap


@given(step=steps, base=bases, cap=caps, factor=st.floats(min_value=1, max_value=10))
def test_exponential_never_decreases_from_one_step_to_the_next(step, base, cap, factor):
    assert exponential(step, base=base, cap=cap, factor=factor) <= exponential(
        step + 1, base=base, cap=cap, factor=factor
    )


@given(attempt=st.integers(min_value=1, max_value=10_000), base=bases, cap=caps, jitter=jitters)
def test_full_jitter_stays_under_the_unjittered_ceiling(attempt, base, cap, jitter):
    ceiling = exponential(attempt - 1, base=base, cap=cap)
    assert 0 <= full_jitter(attempt, base=base, cap=cap, jitter=jitter) <= ceiling <= cap


@given(base=bases, cap=caps, jitter=jitters)
def test_full_jitter_spans_zero_to_the_ceiling(base, cap, jitter):
    assert full_jitter(1, base=base, cap=cap, jitter=0.0) == 0.0
    assert full_jitter(3, base=base, cap=cap, jitter=jitter) == jitter * min(cap, base * 4)


@given(attempt=st.integers(max_value=0), jitter=jitters)
def test_full_jitter_is_zero_before_the_first_failure(attempt, jitter):
    assert full_jitter(attempt, base=0.05, cap=2.0, jitter=jitter) == 0.0
