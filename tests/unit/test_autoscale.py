"""The autoscaler's HPA decision: formula, tolerance, step bound, stabilization, clamping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.platform._autoscale import AutoscalePolicy, HpaAutoscaler
from shoal.platform._autoscaling import Autoscaling, interval_from_env
from shoal.platform.spec import Autoscale, Service
from shoal.testing import FakeClock


def scaler(window: float = 300.0, step: int = 4, lo: int = 1, hi: int = 10,
           target: float = 10.0) -> tuple[HpaAutoscaler, FakeClock]:
    clock = FakeClock()
    policy = AutoscalePolicy(min=lo, max=hi, metric="rps", target=target,
                             scale_down_stabilization=window, max_scale_up_step=step)
    return HpaAutoscaler(policy, clock=clock), clock


def test_desired_is_ceil_of_current_times_ratio():
    s, _ = scaler()
    assert s.decide(2, 25.0).desired == 5  # ceil(2 * 2.5)


def test_exact_ratios_do_not_round_up_on_float_noise():
    s, _ = scaler(target=8.0)
    assert s.recommend(2, 12.0) == 3


def test_within_tolerance_changes_nothing():
    s, _ = scaler()
    decision = s.decide(4, 10.9)
    assert (decision.desired, decision.action) == (4, "none")
    assert s.decide(4, 9.1).desired == 4


def test_scale_up_is_immediate_but_bounded_by_the_step():
    s, _ = scaler(step=2)
    decision = s.decide(2, 100.0)
    assert decision.raw == 10
    assert (decision.desired, decision.action) == (4, "scale_up")
    assert "step limited" in decision.reason


def test_scale_down_waits_for_the_stabilization_window():
    s, clock = scaler(window=60.0)
    assert s.decide(4, 10.0).desired == 4
    clock.now += 10
    held = s.decide(4, 1.0)
    assert (held.desired, held.action) == (4, "none")
    assert "held" in held.reason
    clock.now += 51  # the recommendation of 4 is now older than the window
    down = s.decide(4, 1.0)
    assert (down.desired, down.action) == (1, "scale_down")


def test_scale_down_goes_to_the_highest_recommendation_in_the_window():
    s, clock = scaler(window=30.0)
    s.decide(6, 10.0)          # 6
    clock.now += 20
    s.decide(6, 5.0)           # 3
    clock.now += 15            # the 6 expired; the 3 is within the window
    assert s.decide(6, 1.0).desired == 3


def test_zero_window_scales_down_at_once():
    s, _ = scaler(window=0.0)
    assert s.decide(5, 2.0).desired == 1


def test_missing_metric_changes_nothing_but_clamps():
    s, _ = scaler(lo=2, hi=4)
    assert s.decide(3, None).desired == 3
    assert s.decide(1, None).desired == 2
    assert s.decide(9, None).desired == 4


def test_policy_rejects_min_above_max():
    with pytest.raises(ValueError, match="min"):
        AutoscalePolicy(min=3, max=2, metric="rps", target=1)


@given(current=st.integers(0, 50), value=st.floats(0, 1e6, allow_nan=False),
       lo=st.integers(1, 10), span=st.integers(0, 20), step=st.integers(1, 10))
def test_desired_never_leaves_min_max(current, value, lo, span, step):
    s, _ = scaler(lo=lo, hi=lo + span, step=step)
    decision = s.decide(current, value)
    assert lo <= decision.desired <= lo + span
    if lo <= current <= lo + span and decision.desired > current:
        assert decision.desired - current <= step


@given(current=st.integers(1, 10), rel=st.floats(-0.1, 0.1))
def test_within_tolerance_never_scales(current, rel):
    s, _ = scaler()
    assert s.decide(current, 10.0 * (1 + rel * 0.999)).desired == current


@given(values=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30),
       gaps=st.lists(st.floats(0, 20), min_size=30, max_size=30))
def test_scale_down_never_below_a_recommendation_within_the_window(values, gaps):
    window = 30.0
    s, clock = scaler(window=window)
    current = 5
    seen: list[tuple[float, int]] = []
    for value, gap in zip(values, gaps, strict=False):
        clock.now += gap
        decision = s.decide(current, value)
        seen.append((clock.now, decision.raw))
        if decision.action == "scale_down":
            recent = [r for t, r in seen if clock.now - t <= window]
            assert decision.desired >= max(recent)
        current = decision.desired


def test_shell_logs_and_keeps_decisions_for_status():
    svc = Service(app="m:a", autoscale=Autoscale(min=1, max=3, metric="rps", target=10,
                                                 scale_down_stabilization=0))
    plain = Service(app="m:b")
    auto = Autoscaling({"orders": svc, "users": plain}, clock=FakeClock())
    assert auto.view("users") is None
    auto.evaluate("orders", 1, 25.0)
    view = auto.view("orders")
    assert view is not None
    assert (view["desired"], view["current_metric"], view["min"], view["max"]) == (3, 25.0, 1, 3)
    assert view["last_decision"]["action"] == "scale_up"


async def test_shell_scales_through_the_supervisor_and_skips_busy_ones():
    class Sup:
        def __init__(self, desired: int, busy: bool) -> None:
            self.desired = desired
            self.busy = busy

    class Metrics:
        def per_replica(self, service: str, metric: str) -> float | None:
            return 30.0

    svc = Service(app="m:a", autoscale=Autoscale(min=1, max=4, metric="rps", target=10))
    auto = Autoscaling({"a": svc, "b": svc}, clock=FakeClock())
    calls: list[tuple[str, int]] = []

    async def scale(name: str, n: int) -> None:
        calls.append((name, n))

    await auto.run_once(Metrics(), {"a": Sup(1, busy=False), "b": Sup(1, busy=True)}, scale)
    assert calls == [("a", 3)]


def test_interval_env_is_validated():
    assert interval_from_env({}) == 5.0
    assert interval_from_env({"SHOAL_AUTOSCALE_INTERVAL": "0.5"}) == 0.5
    with pytest.raises(ValueError, match="SHOAL_AUTOSCALE_INTERVAL"):
        interval_from_env({"SHOAL_AUTOSCALE_INTERVAL": "nope"})
