"""Load balancers: P2C least-outstanding and round-robin over an instance table."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from shoal.client import InstanceTable, LeastOutstandingBalancer, RoundRobinBalancer
from shoal.client._balancer import LATENCY_STALE_AFTER
from shoal.testing import FakeClock

URLS = [f"http://127.0.0.1:{8000 + i}" for i in range(5)]


def test_p2c_prefers_the_instance_with_fewer_outstanding_requests():
    table = InstanceTable(URLS[:2])
    busy, idle = table.instances
    busy.outstanding = 5
    balancer = LeastOutstandingBalancer(table, clock=FakeClock(), rng=random.Random(1))
    assert all(balancer.pick() is idle for _ in range(50))


def test_p2c_breaks_ties_by_latency():
    clock = FakeClock()
    table = InstanceTable(URLS[:2])
    slow, fast = table.instances
    slow.observe_latency(0.5, clock.now)
    fast.observe_latency(0.01, clock.now)
    balancer = LeastOutstandingBalancer(table, clock=clock, rng=random.Random(1))
    assert all(balancer.pick() is fast for _ in range(50))


def test_an_instance_that_lost_every_tie_gets_traffic_again_once_its_latency_is_stale():
    """Sequential calls (no concurrency): the once-slow instance is not starved for ever,
    and one fast sample after the stale time is enough to share the load again."""
    clock = FakeClock()
    table = InstanceTable(URLS[:2])
    once_slow, fast = table.instances
    once_slow.observe_latency(0.5, clock.now)
    balancer = LeastOutstandingBalancer(table, clock=clock, rng=random.Random(1))

    def call() -> object:
        inst = balancer.pick()
        assert inst is not None
        inst.observe_latency(0.01, clock.now)  # both answer fast now
        clock.now += 0.01
        return inst

    first_second = Counter(call() for _ in range(int(LATENCY_STALE_AFTER / 0.01) - 1))
    assert first_second == {fast: sum(first_second.values())}
    later = Counter(call() for _ in range(1000))
    assert later[once_slow] > 300, later


@given(slow_ms=st.floats(min_value=1, max_value=60_000), picks=st.integers(1, 50))
def test_every_instance_is_picked_within_the_stale_time_plus_a_few_ties(slow_ms, picks):
    clock = FakeClock()
    table = InstanceTable(URLS[:3])
    for i, inst in enumerate(table.instances):
        inst.observe_latency(slow_ms / 1000 if i == 0 else 0.001, clock.now)
    balancer = LeastOutstandingBalancer(table, clock=clock, rng=random.Random(picks))
    clock.now += LATENCY_STALE_AFTER + 0.001
    seen = set()
    for _ in range(200):
        inst = balancer.pick()
        assert inst is not None
        seen.add(inst)
        inst.observe_latency(0.001, clock.now)
    assert seen == set(table.instances)


def test_p2c_spreads_load_over_equal_instances():
    table = InstanceTable(URLS[:3])
    balancer = LeastOutstandingBalancer(table, clock=FakeClock(), rng=random.Random(7))
    counts = Counter(balancer.pick().url for _ in range(3000))  # type: ignore[union-attr]
    assert len(counts) == 3
    assert min(counts.values()) > 600


def test_round_robin_cycles_through_healthy_instances():
    table = InstanceTable(URLS[:3])
    balancer = RoundRobinBalancer(table, clock=FakeClock())
    picks = [balancer.pick().url for _ in range(6)]  # type: ignore[union-attr]
    assert picks == URLS[:3] * 2


def test_retry_avoids_instances_already_tried():
    table = InstanceTable(URLS[:2])
    first, second = table.instances
    balancer = LeastOutstandingBalancer(table, clock=FakeClock(), rng=random.Random(3))
    assert all(balancer.pick(tried=(first,)) is second for _ in range(20))
    # With every instance tried, a retry may reuse one rather than fail.
    assert balancer.pick(tried=(first, second)) in (first, second)


def test_ejected_instance_returns_when_its_ejection_expires():
    clock = FakeClock()
    table = InstanceTable(URLS[:2])
    ejected, healthy = table.instances
    ejected.ejected_until = clock.now + 10
    table.touch()
    balancer = RoundRobinBalancer(table, clock=clock)
    assert {balancer.pick() for _ in range(4)} == {healthy}
    clock.now += 10
    assert {balancer.pick() for _ in range(4)} == {ejected, healthy}


def test_membership_update_keeps_instance_state_and_empty_table_picks_none():
    table = InstanceTable(URLS[:2])
    kept = table.instances[1]
    kept.outstanding = 3
    table.update([URLS[1], URLS[2] + "/"])
    assert table.instances[0] is kept
    assert table.instances[1].url == URLS[2]
    table.update([])
    assert LeastOutstandingBalancer(table, clock=FakeClock()).pick() is None


@given(
    n=st.integers(min_value=1, max_value=8),
    ejected=st.sets(st.integers(min_value=0, max_value=7)),
    tried=st.sets(st.integers(min_value=0, max_value=7)),
    outstanding=st.lists(st.integers(min_value=0, max_value=5), min_size=8, max_size=8),
    seed=st.integers(min_value=0, max_value=2**32),
    round_robin=st.booleans(),
)
def test_never_picks_an_ejected_instance_while_a_healthy_one_exists(
    n, ejected, tried, outstanding, seed, round_robin
):
    clock = FakeClock()
    table = InstanceTable(URLS[:5] + [f"http://127.0.0.1:{9000 + i}" for i in range(3)])
    table.update(inst.url for inst in table.instances[:n])
    for i, inst in enumerate(table.instances):
        inst.outstanding = outstanding[i]
        if i in ejected:
            inst.ejected_until = clock.now + 5
    table.touch()
    balancer = (
        RoundRobinBalancer(table, clock=clock)
        if round_robin
        else LeastOutstandingBalancer(table, clock=clock, rng=random.Random(seed))
    )
    tried_instances = tuple(table.instances[i] for i in tried if i < n)
    healthy = [inst for inst in table.instances if not inst.is_ejected(clock.now)]
    for _ in range(10):
        picked = balancer.pick(tried_instances)
        if not healthy:
            assert picked is None
            continue
        assert picked in healthy
        untried = [inst for inst in healthy if inst not in tried_instances]
        if untried:
            assert picked in untried
