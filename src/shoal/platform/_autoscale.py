"""The autoscaler's decision, as Kubernetes' HorizontalPodAutoscaler makes it (pure: no I/O).

For a metric averaged per replica and its target::

    ratio   = metric / target
    raw     = current                      if |ratio - 1| <= tolerance
            = ceil(current * ratio)        otherwise

``raw`` is clamped to ``[min, max]`` and remembered with its time. Scaling up happens at once,
by at most ``max_scale_up_step`` replicas per decision. Scaling down uses the *highest*
recommendation of the last ``scale_down_stabilization`` seconds (the HPA's stabilization
window), so a brief dip never removes replicas and a flapping metric never flaps the fleet.
A missing metric (no replica scraped yet) changes nothing.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

#: Upper bound on remembered recommendations, whatever the window and evaluation rate.
MAX_HISTORY = 4096
Action = Literal["scale_up", "scale_down", "none"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalePolicy:
    """What one service's autoscaling is configured with (the spec's ``autoscale`` block)."""

    min: int
    max: int
    metric: str
    target: float
    tolerance: float = 0.1
    scale_down_stabilization: float = 300.0
    max_scale_up_step: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.min <= self.max:
            raise ValueError(f"need 0 <= min <= max, got min={self.min} max={self.max}")
        if not self.target > 0:
            raise ValueError(f"target must be > 0, got {self.target}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must be within [0, 1), got {self.tolerance}")
        if self.scale_down_stabilization < 0 or self.max_scale_up_step < 1:
            raise ValueError("scale_down_stabilization must be >= 0 and max_scale_up_step >= 1")

    @classmethod
    def from_spec(cls, block: Any) -> AutoscalePolicy:
        """From a ``spec.Autoscale`` (or anything with the same attributes)."""
        return cls(min=block.min, max=block.max, metric=block.metric, target=block.target,
                   tolerance=block.tolerance,
                   scale_down_stabilization=block.scale_down_stabilization,
                   max_scale_up_step=block.max_scale_up_step)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleDecision:
    """One evaluation: what was seen, what the formula said, what to run."""

    at: float
    current: int
    metric_value: float | None
    raw: int
    desired: int
    action: Action
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": round(self.at, 3), "current": self.current,
                "metric_value": None if self.metric_value is None
                else round(self.metric_value, 3),
                "raw": self.raw, "desired": self.desired, "action": self.action,
                "reason": self.reason}


class HpaAutoscaler:
    """Decides a service's replica count from its per-replica metric (one per service)."""

    def __init__(self, policy: AutoscalePolicy, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._history: deque[tuple[float, int]] = deque(maxlen=MAX_HISTORY)

    def clamp(self, replicas: int) -> int:
        return max(self.policy.min, min(self.policy.max, replicas))

    def recommend(self, current: int, value: float) -> int:
        """The formula alone: ``ceil(current * value / target)`` outside the tolerance band,
        ``current`` inside it (clamped to ``[min, max]``)."""
        ratio = value / self.policy.target
        if abs(ratio - 1.0) <= self.policy.tolerance:
            return self.clamp(current)
        # A tiny epsilon keeps 2 * 12 / 8 == 3.0000000000000004 from becoming 4.
        return self.clamp(math.ceil(current * ratio - 1e-9))

    def decide(self, current: int, value: float | None) -> ScaleDecision:
        """Evaluate now. Never returns a ``desired`` outside ``[min, max]``."""
        now = self._clock()
        policy = self.policy
        if value is None or current <= 0:
            desired = self.clamp(current)
            reason = ("no metric yet" if value is None else "no replicas to measure")
            if desired != current:
                reason += f"; clamped to [{policy.min}, {policy.max}]"
            return self._result(now, current, value, desired, desired, reason)
        raw = self.recommend(current, value)
        self._history.append((now, raw))
        horizon = now - policy.scale_down_stabilization
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()
        # Kubernetes: scale down only to the highest recommendation in the window.
        stabilized = max(r for _, r in self._history)
        if raw > current:
            desired = min(raw, current + policy.max_scale_up_step)
            reason = (f"{policy.metric} {value:.3g}/replica > target {policy.target:g}"
                      + (f" (step limited to +{policy.max_scale_up_step})" if desired < raw
                         else ""))
        elif stabilized < current:
            desired = stabilized
            reason = f"{policy.metric} {value:.3g}/replica < target {policy.target:g}"
        elif raw < current:
            desired = current
            reason = (f"scale-down to {raw} held: {stabilized} recommended within the last "
                      f"{policy.scale_down_stabilization:g}s")
        else:
            desired = current
            reason = f"{policy.metric} {value:.3g}/replica within tolerance of {policy.target:g}"
        desired = self.clamp(desired)
        return self._result(now, current, value, raw, desired, reason)

    @staticmethod
    def _result(now: float, current: int, value: float | None, raw: int, desired: int,  # noqa: PLR0917
                reason: str) -> ScaleDecision:
        action: Action = ("scale_up" if desired > current
                          else "scale_down" if desired < current else "none")
        return ScaleDecision(at=now, current=current, metric_value=value, raw=raw,
                             desired=desired, action=action, reason=reason)
