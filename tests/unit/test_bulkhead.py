"""Bulkhead accounting: a hard cap on calls in flight."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal._errors import ConfigurationError
from shoal.client import Bulkhead, BulkheadPolicy


def test_excess_calls_are_refused_until_one_is_released():
    bulkhead = Bulkhead(BulkheadPolicy(max_concurrent=2))
    assert bulkhead.try_acquire()
    assert bulkhead.try_acquire()
    assert not bulkhead.try_acquire()
    bulkhead.release()
    assert bulkhead.try_acquire()


def test_release_without_acquire_is_a_bug_not_a_silent_credit():
    with pytest.raises(RuntimeError):
        Bulkhead(BulkheadPolicy()).release()


def test_limit_below_one_names_the_setting():
    with pytest.raises(ConfigurationError, match=r"bulkhead\.max_concurrent"):
        BulkheadPolicy(max_concurrent=0)


@given(limit=st.integers(1, 5), ops=st.lists(st.booleans(), max_size=100))
def test_in_flight_never_exceeds_the_limit(limit, ops):
    bulkhead = Bulkhead(BulkheadPolicy(max_concurrent=limit))
    held = 0
    for acquire in ops:
        if acquire:
            if bulkhead.try_acquire():
                held += 1
        elif held:
            bulkhead.release()
            held -= 1
        assert bulkhead.in_flight == held <= limit
