"""Fault injection in the chassis: added latency, error answers, aborted connections.

Only active when ``SHOAL_CHAOS=1`` (the local platform sets it when the spec's ``control.chaos``
is on; generated production manifests never do). The middlewares decide once, at construction,
whether to consult it, so a service without chaos pays nothing per request.

The rules are pure data (:class:`FaultRule`) and the per-request decision is a pure function
(:func:`decide`) of the rules, the time and a random draw. A background thread
(:class:`ChaosPoller`) keeps the rules current by polling the control plane's
``GET /v1/chaos?service=S&instance=I``; the request path only reads an immutable tuple.
Every rule expires: the control plane sends ``expires_in`` seconds, and the replica drops the
rule on its own clock when they are spent, even if the control plane is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shoal._logging import get_logger

FaultKind = Literal["latency", "errors", "abort"]
FAULT_KINDS: tuple[FaultKind, ...] = ("latency", "errors", "abort")
CHAOS_ENV = "SHOAL_CHAOS"
CONTROL_URL_ENV = "SHOAL_CONTROL_URL"
#: The read-only credential the platform gives replicas for ``GET /v1/chaos`` (nothing else).
CHAOS_TOKEN_ENV = "SHOAL_CHAOS_TOKEN"  # noqa: S105 - a variable name
#: Fallback for a process outside the fleet: the fleet's own (admin) token.
CONTROL_TOKEN_ENV = "SHOAL_CONTROL_TOKEN"  # noqa: S105 - a variable name
#: Header on answers the fault injection produced, so a caller can tell them from real ones.
CHAOS_HEADER = "Shoal-Chaos"
#: :data:`CHAOS_HEADER` as an ASGI/raw header name.
CHAOS_HEADER_NAME = CHAOS_HEADER.lower().encode()
POLL_INTERVAL = 0.5

_log = get_logger("shoal.chaos")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultRule:
    """One fault for one service (or one of its instances), until ``expires_at``.

    ``expires_at`` is on the replica's ``time.monotonic()`` clock. ``rate`` is the share of
    requests affected (1.0: all). ``latency_ms`` applies to ``latency`` rules, ``status`` to
    ``errors`` rules.
    """

    kind: FaultKind
    expires_at: float
    rate: float = 1.0
    latency_ms: float = 0.0
    status: int = 503
    instance: str | None = None

    @classmethod
    def from_wire(cls, data: Mapping[str, Any], now: float) -> FaultRule:
        """Build a rule from the control plane's JSON (``expires_in`` seconds from ``now``).

        Raises ``ValueError`` for an unknown kind or out-of-range values.
        """
        kind = data.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        rate = float(data.get("rate", 1.0))
        latency_ms = float(data.get("latency_ms", 0.0))
        status = int(data.get("status", 503))
        expires_in = float(data["expires_in"])
        if not 0 <= rate <= 1 or latency_ms < 0 or not 100 <= status <= 599 or expires_in < 0:
            raise ValueError(f"fault rule out of range: {dict(data)!r}")
        instance = data.get("instance")
        return cls(kind=kind, expires_at=now + expires_in, rate=rate, latency_ms=latency_ms,
                   status=status, instance=str(instance) if instance else None)


@dataclass(frozen=True, slots=True)
class FaultDecision:
    """What to do to one request: wait ``delay`` seconds, then answer ``status`` or abort."""

    delay: float = 0.0
    status: int | None = None
    abort: bool = False

    @property
    def active(self) -> bool:
        return self.delay > 0 or self.status is not None or self.abort


NO_FAULT = FaultDecision()


def decide(rules: Iterable[FaultRule], now: float, draw: Callable[[], float]) -> FaultDecision:
    """The faults for one request: latencies add up; an abort wins over an error answer.

    ``draw()`` returns a uniform number in [0, 1); each rule with ``rate < 1`` draws once.
    Expired rules are ignored.
    """
    delay = 0.0
    status: int | None = None
    abort = False
    for rule in rules:
        if rule.expires_at <= now or (rule.rate < 1 and draw() >= rule.rate):
            continue
        if rule.kind == "latency":
            delay += rule.latency_ms / 1000
        elif rule.kind == "errors":
            status = rule.status if status is None else status
        else:
            abort = True
    if not (delay or status is not None or abort):
        return NO_FAULT
    return FaultDecision(delay=delay, status=None if abort else status, abort=abort)


async def delayed_decision(poller: ChaosPoller) -> FaultDecision | None:
    """The faults for one request on an async server, its injected latency already waited;
    ``None`` when there are none. The caller answers the error or abort its own way."""
    fault = poller.decision()
    if not fault.active:
        return None
    if fault.delay:
        await asyncio.sleep(fault.delay)
    return fault


def control_url_from_env(env: Mapping[str, str]) -> str | None:
    """The control plane's URL: ``SHOAL_CONTROL_URL``, else a ``local+http://`` discovery."""
    url = env.get(CONTROL_URL_ENV)
    if url:
        return url.rstrip("/")
    discovery = env.get("SHOAL_DISCOVERY", "")
    if discovery.startswith("local+"):
        return discovery.removeprefix("local+").rstrip("/")
    return None


class ChaosPoller:
    """Keeps the current fault rules of one instance, refreshed by a daemon thread.

    The thread is started lazily by :meth:`decision` in the process that serves (a server may
    fork after the app is built, and threads do not survive a fork).
    """

    def __init__(
        self,
        *,
        service: str,
        instance: str,
        control_url: str | None,
        token: str = "",
        interval: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.service = service
        self.instance = instance
        self.control_url = control_url
        self.token = token
        self.interval = interval
        self.rules: tuple[FaultRule, ...] = ()
        self._clock = clock
        self._draw = (rng or random.Random()).random  # noqa: S311 - fault sampling, not crypto
        self._pid = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def decision(self) -> FaultDecision:
        """The faults for the request being served now (cheap: reads a tuple)."""
        if self._pid != os.getpid():
            self._start()
        rules = self.rules
        if not rules:
            return NO_FAULT
        return decide(rules, self._clock(), self._draw)

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid() or self.control_url is None:
                self._pid = os.getpid()
                return
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="shoal-chaos-poll", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self.refresh()
                failures = 0
            except (OSError, ValueError, KeyError) as exc:
                failures += 1
                if failures == 3:  # say it once; the control plane may simply be stopping
                    _log.warning("chaos.poll_failed", error=type(exc).__name__)
            self._stop.wait(self.interval)

    def refresh(self) -> None:
        """Fetch the rules for this instance once (raises ``OSError``/``ValueError``)."""
        assert self.control_url is not None
        query = urllib.parse.urlencode({"service": self.service, "instance": self.instance})
        request = urllib.request.Request(f"{self.control_url}/v1/chaos?{query}")  # noqa: S310
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310 - our control URL
            body = json.loads(resp.read())
        now = self._clock()
        rules = tuple(FaultRule.from_wire(r, now) for r in body.get("rules", ()))
        if _signature(rules) != _signature(self.rules):
            _log.info("chaos.rules", rules=[{"kind": r.kind, "rate": r.rate,
                                             "latency_ms": r.latency_ms, "status": r.status}
                                            for r in rules])
        self.rules = rules


def _signature(rules: tuple[FaultRule, ...]) -> tuple[tuple[object, ...], ...]:
    return tuple((r.kind, r.rate, r.latency_ms, r.status, r.instance) for r in rules)


def poller_from_env(service: str, instance: str,
                    env: Mapping[str, str] | None = None) -> ChaosPoller | None:
    """A poller when ``SHOAL_CHAOS=1`` in ``env`` (default ``os.environ``), else ``None``."""
    env = os.environ if env is None else env
    if env.get(CHAOS_ENV) != "1":
        return None
    return ChaosPoller(service=service, instance=instance, control_url=control_url_from_env(env),
                       token=env.get(CHAOS_TOKEN_ENV) or env.get(CONTROL_TOKEN_ENV, ""))
