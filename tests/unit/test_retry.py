"""Retry policy (what, when, backoff) and the per-client retry budget."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal._errors import ConfigurationError
from shoal.client import RetryBudget, RetryBudgetPolicy, RetryPolicy, parse_retry_after
from shoal.client._retry import is_idempotent
from shoal.testing import FakeClock


def test_only_idempotent_methods_or_keyed_requests_are_retryable():
    assert is_idempotent("GET", False)
    assert is_idempotent("PUT", False)
    assert not is_idempotent("POST", False)
    assert not is_idempotent("PATCH", False)
    assert is_idempotent("POST", True)


def test_backoff_is_full_jitter_under_an_exponential_ceiling():
    policy = RetryPolicy(backoff_initial=0.1, backoff_max=1.0)
    assert policy.backoff(1, 0.0) == 0.0
    assert policy.backoff(1, 0.999) == pytest.approx(0.0999)
    assert policy.backoff(3, 0.5) == pytest.approx(0.2)
    assert policy.backoff(50, 0.5) == pytest.approx(0.5)  # capped at backoff_max


@given(retry=st.integers(1, 1000), jitter=st.floats(0, 1, exclude_max=True))
def test_backoff_stays_within_zero_and_the_cap(retry, jitter):
    policy = RetryPolicy(backoff_initial=0.02, backoff_max=2.0)
    delay = policy.backoff(retry, jitter)
    assert 0.0 <= delay <= min(2.0, 0.02 * 2 ** (retry - 1))


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("3", 0.0) == 3.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, now) == pytest.approx(7.0)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    ("setting", "kwargs"),
    [
        ("retry.max_attempts", {"max_attempts": 0}),
        ("retry.backoff_initial", {"backoff_initial": 0}),
        ("retry.backoff_max", {"backoff_initial": 1.0, "backoff_max": 0.5}),
        ("retry.retry_on_status", {"retry_on_status": frozenset({404, 503})}),
    ],
)
def test_bad_retry_policy_names_the_setting(setting, kwargs):
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**kwargs)
    assert info.value.setting == setting


def test_bad_budget_policy_names_the_setting():
    with pytest.raises(ConfigurationError, match=r"retry_budget\.ttl"):
        RetryBudgetPolicy(ttl=0.1)
    with pytest.raises(ConfigurationError, match=r"retry_budget\.percent_can_retry"):
        RetryBudgetPolicy(percent_can_retry=-1)


def test_budget_allows_the_floor_then_a_percentage_of_calls():
    clock = FakeClock()
    budget = RetryBudget(
        RetryBudgetPolicy(percent_can_retry=20, min_retries_per_second=1, ttl=10), clock=clock
    )
    assert sum(budget.try_withdraw() for _ in range(50)) == 10  # the reserve: 1/s x 10 s
    for _ in range(100):
        budget.deposit()
    assert sum(budget.try_withdraw() for _ in range(50)) == 20  # 20 % of 100 calls


def test_budget_deposits_and_withdrawals_expire():
    clock = FakeClock()
    budget = RetryBudget(
        RetryBudgetPolicy(percent_can_retry=50, min_retries_per_second=0, ttl=10), clock=clock
    )
    for _ in range(10):
        budget.deposit()
    clock.now += 11
    assert not budget.try_withdraw()
    for _ in range(4):
        budget.deposit()
    assert budget.try_withdraw()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.now += 11  # the withdrawals expire with the deposits
    assert budget.balance() == 0


def test_an_outage_cannot_multiply_load_beyond_the_budget():
    # 1000 calls/s for 30 s, all failing, each wanting 2 retries.
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetPolicy(), clock=clock)  # 20 % + 10/s
    calls = retries = 0
    for _ in range(30_000):
        clock.now += 0.001
        budget.deposit()
        calls += 1
        retries += budget.try_withdraw() + budget.try_withdraw()
    assert retries <= 0.2 * calls + 10 * 30 + 100  # one ttl of reserve
    assert retries >= 0.2 * calls * 0.9


@settings(max_examples=200, deadline=None)
@given(
    percent=st.sampled_from([0.0, 5.0, 20.0, 50.0, 100.0]),
    floor=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    ttl=st.sampled_from([1.0, 2.0, 10.0]),
    events=st.lists(
        st.tuples(st.floats(0, 0.7), st.sampled_from(["call", "retry", "retry", "retry"])),
        max_size=300,
    ),
)
def test_retries_never_exceed_the_budget_over_any_window(percent, floor, ttl, events):
    clock = FakeClock(0.0)
    policy = RetryBudgetPolicy(percent_can_retry=percent, min_retries_per_second=floor, ttl=ttl)
    budget = RetryBudget(policy, clock=clock)
    calls: list[float] = []
    retries: list[float] = []
    reserve = int(floor * ttl)
    width = ttl / 10
    for gap, kind in events:
        clock.now += gap
        if kind == "call":
            budget.deposit()
            calls.append(clock.now)
        elif budget.try_withdraw():
            retries.append(clock.now)
            # Every window of length ttl - width ending at a granted retry, against the calls of
            # the ttl before it: the budget's counted window lies between the two.
            t = clock.now
            spent = sum(1 for r in retries if r > t - (ttl - width) - 1e-9)
            earned = sum(1 for c in calls if c > t - ttl - 1e-9)
            assert spent <= reserve + percent / 100 * earned + 1e-9
