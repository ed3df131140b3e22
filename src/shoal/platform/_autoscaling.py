"""The autoscaler's shell: evaluates every service with an ``autoscale`` block on an interval.

It reads the per-replica metric from the control plane's metrics scraper, asks the pure
:class:`~shoal.platform._autoscale.HpaAutoscaler`, logs each decision (``autoscale.decision``,
at info when it changes the count) and calls the service supervisor's ``scale``. A supervisor in
the middle of a rollout or a scale is skipped for that round.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from shoal._logging import get_logger
from shoal.platform._autoscale import AutoscalePolicy, HpaAutoscaler, ScaleDecision
from shoal.platform.spec import Service

log = get_logger("shoal.platform")
#: Seconds between evaluations (the HPA's sync period is 15 s; a local fleet reacts faster).
DEFAULT_INTERVAL = 5.0
INTERVAL_ENV = "SHOAL_AUTOSCALE_INTERVAL"
#: Decisions kept per service for ``/v1/status`` and ``shoal ps``.
HISTORY = 20


class MetricSource(Protocol):
    def per_replica(self, service: str, metric: Any) -> float | None: ...


class ScaleTarget(Protocol):
    @property
    def desired(self) -> int: ...

    @property
    def busy(self) -> bool: ...


ScaleFn = Callable[[str, int], Awaitable[None]]


def interval_from_env(env: Mapping[str, str] | None = None) -> float:
    """``SHOAL_AUTOSCALE_INTERVAL`` (seconds, 0.1 to 300), else :data:`DEFAULT_INTERVAL`."""
    raw = (os.environ if env is None else env).get(INTERVAL_ENV)
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 300:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds in [0.1, 300], got {raw!r}")
    return value


class Autoscaling:
    """One :class:`HpaAutoscaler` per autoscaled service, and their recent decisions."""

    def __init__(
        self,
        services: Mapping[str, Service],
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self._wall = wall_clock
        self.scalers = {
            name: HpaAutoscaler(AutoscalePolicy.from_spec(svc.autoscale), clock=clock)
            for name, svc in services.items() if svc.autoscale is not None}
        self.last: dict[str, ScaleDecision] = {}
        self.decisions: dict[str, deque[dict[str, Any]]] = {
            name: deque(maxlen=HISTORY) for name in self.scalers}

    def evaluate(self, name: str, current: int, value: float | None) -> ScaleDecision:
        """Decide for ``name`` and remember the decision (no I/O besides the log line)."""
        decision = self.scalers[name].decide(current, value)
        self.last[name] = decision
        fields = {"service": name, **decision.as_dict()}
        del fields["at"]
        if decision.action != "none":
            log.info("autoscale.decision", **fields)
            self.decisions[name].append({**decision.as_dict(), "at": round(self._wall(), 3)})
        else:
            log.debug("autoscale.decision", **fields)
        return decision

    def view(self, name: str) -> dict[str, Any] | None:
        """What ``/v1/status`` shows for ``name`` (None when it is not autoscaled)."""
        scaler = self.scalers.get(name)
        if scaler is None:
            return None
        policy = scaler.policy
        last = self.last.get(name)
        history = self.decisions[name]
        return {
            "min": policy.min, "max": policy.max, "metric": policy.metric,
            "target": policy.target, "tolerance": policy.tolerance,
            "scale_down_stabilization": policy.scale_down_stabilization,
            "current_metric": None if last is None or last.metric_value is None
            else round(last.metric_value, 3),
            "desired": None if last is None else last.desired,
            "reason": None if last is None else last.reason,
            "last_decision": history[-1] if history else None,
            "decisions": list(history),
        }

    async def run_once(self, metrics: MetricSource, targets: Mapping[str, ScaleTarget],
                       scale: ScaleFn) -> None:
        for name in self.scalers:
            target = targets.get(name)
            if target is None or target.busy:
                continue
            value = metrics.per_replica(name, self.scalers[name].policy.metric)
            decision = self.evaluate(name, target.desired, value)
            if decision.desired != target.desired:
                await scale(name, decision.desired)

    async def run(self, metrics: MetricSource, targets: Mapping[str, ScaleTarget],
                  scale: ScaleFn) -> None:
        """Evaluate every ``interval`` seconds until cancelled."""
        if not self.scalers:
            return
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once(metrics, targets, scale)
            except Exception as exc:  # noqa: BLE001 - one failed round must not end the loop
                log.warning("autoscale.round_failed", error=repr(exc))
