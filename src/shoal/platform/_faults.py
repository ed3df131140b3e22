"""Fault injection, control-plane side: the board of active rules and its HTTP API.

Replicas with ``SHOAL_CHAOS=1`` poll ``GET /v1/chaos?service=S&instance=I`` (see
``shoal._chaos``) with the read-only credential in ``SHOAL_CHAOS_TOKEN``, which can do nothing
else (``shoal.platform._api.read_only_grants``); the CLI, with the fleet's token, adds rules
with ``POST /v1/chaos``, clears them with ``DELETE /v1/chaos`` and kills replicas with
``POST /v1/services/{name}/kill``. Every rule has a duration (at most :data:`MAX_DURATION`), so
a forgotten experiment ends by itself. When the spec's ``control.chaos`` is off, every chaos
endpoint answers 409.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shoal._chaos import FAULT_KINDS, FaultKind
from shoal._logging import get_logger

if TYPE_CHECKING:
    from shoal.platform.controlplane import ControlPlane

log = get_logger("shoal.platform")
#: Longest a fault may last (seconds).
MAX_DURATION = 3600.0
DEFAULT_DURATION = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveFault:
    """A fault the control plane serves to replicas until ``expires_at`` (its clock)."""

    id: int
    service: str
    kind: FaultKind
    expires_at: float
    rate: float = 1.0
    latency_ms: float = 0.0
    status: int = 503
    instance: str | None = None

    def wire(self, now: float) -> dict[str, Any]:
        data = asdict(self)
        del data["expires_at"]
        data["expires_in"] = round(max(0.0, self.expires_at - now), 3)
        return data


class FaultBoard:
    """The active faults (pure: an injected clock, no I/O)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ids = itertools.count(1)
        self._faults: list[ActiveFault] = []

    def add(
        self, service: str, kind: str, duration: float, *, rate: float = 1.0,
        latency_ms: float = 0.0, status: int = 503, instance: str | None = None,
    ) -> ActiveFault:
        """Add a fault; raises ``ValueError`` naming the first out-of-range field."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, got {kind!r}")
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"for_s must be within (0, {MAX_DURATION:g}] seconds")
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within [0, 1]")
        if kind == "latency" and not 0 < latency_ms <= 600_000:
            raise ValueError("latency_ms must be within (0, 600000]")
        if kind == "errors" and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400-599)")
        fault = ActiveFault(id=next(self._ids), service=service, kind=kind,
                            expires_at=self._clock() + duration, rate=rate,
                            latency_ms=latency_ms, status=status, instance=instance)
        self._faults.append(fault)
        return fault

    def active(self, service: str | None = None, instance: str | None = None
               ) -> list[ActiveFault]:
        """Unexpired faults for ``service`` (all if None) that apply to ``instance``."""
        now = self._clock()
        self._faults = [f for f in self._faults if f.expires_at > now]
        return [f for f in self._faults
                if (service is None or f.service == service)
                and (instance is None or f.instance is None or f.instance == instance)]

    def clear(self, service: str | None = None) -> int:
        """Remove the faults of ``service`` (every fault if None); returns how many."""
        before = len(self._faults)
        self._faults = [f for f in self._faults if service is not None and f.service != service]
        return before - len(self._faults)

    def now(self) -> float:
        return self._clock()


def chaos_routes(cp: ControlPlane) -> list[web.RouteDef]:
    """The chaos endpoints of the control API (behind its bearer-token middleware)."""
    from shoal.platform._api import (  # noqa: PLC0415 - _api imports us lazily
        _json,
        problem,
        read_json,
    )

    board: FaultBoard = cp.faults

    def disabled() -> web.Response | None:
        if cp.spec.control.chaos:
            return None
        return problem(409, "fault injection is off for this fleet (control.chaos: false)")

    async def list_faults(request: web.Request) -> web.Response:
        service = request.query.get("service")
        instance = request.query.get("instance")
        now = board.now()
        rules = [] if not cp.spec.control.chaos else [
            f.wire(now) for f in board.active(service, instance)]
        return _json({"enabled": cp.spec.control.chaos, "rules": rules})

    async def add_fault(request: web.Request) -> web.Response:
        if (off := disabled()) is not None:
            return off
        data = await read_json(request)
        try:
            service = str(data["service"])
            if service not in cp.supervisors:
                return problem(404, f"no service {service!r} in this fleet")
            instance = data.get("instance") or None
            if instance is not None and not isinstance(instance, str):
                return problem(422, "invalid fault: instance must be a string")
            fault = board.add(
                service, str(data["kind"]), float(data.get("for_s", DEFAULT_DURATION)),
                rate=float(data.get("rate", 1.0)), latency_ms=float(data.get("latency_ms", 0)),
                status=int(data.get("status", 503)), instance=instance)
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            return problem(422, f"invalid fault: {exc}")
        log.warning("chaos.fault_added", fault=fault.wire(board.now()))
        return _json(fault.wire(board.now()), status=201)

    async def clear_faults(request: web.Request) -> web.Response:
        if (off := disabled()) is not None:
            return off
        removed = board.clear(request.query.get("service"))
        log.warning("chaos.cleared", target=request.query.get("service"), removed=removed)
        return _json({"removed": removed})

    async def kill(request: web.Request) -> web.Response:
        if (off := disabled()) is not None:
            return off
        name = request.match_info["name"]
        if name not in cp.supervisors:
            return problem(404, f"no service {name!r} in this fleet")
        instance = request.query.get("instance") or None
        killed = cp.supervisors[name].kill(instance)
        if killed is None:
            return problem(404, f"no running replica {instance or ''} of {name!r} to kill".replace(
                "  ", " "))
        log.warning("chaos.killed", target=killed[0], pid=killed[1])
        return _json({"service": name, "instance": killed[0], "pid": killed[1]})

    return [
        web.get("/v1/chaos", list_faults),
        web.post("/v1/chaos", add_fault),
        web.delete("/v1/chaos", clear_faults),
        web.post("/v1/services/{name}/kill", kill),
    ]
