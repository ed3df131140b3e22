"""``shoal load``: an open-loop HTTP load generator for a local fleet (loopback only, bounded).

Open loop: request *i* is due at ``start + i / rate`` whether or not earlier ones have answered,
so a slow server shows up as latency and errors, not as a politely lower rate (the coordinated
omission a closed loop hides). Concurrency is bounded: a request due while ``max_in_flight``
are outstanding is not sent and counts as ``skipped``. Latency is measured from the time the
request was due. Only loopback hosts are accepted and a run lasts at most :data:`MAX_DURATION`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from shoal._errors import ConfigurationError

MAX_DURATION = 600.0
MAX_RATE = 5000.0


def check_loopback(url: str) -> None:
    """Raise :class:`ConfigurationError` unless ``url`` is http(s) on a loopback host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError("url", f"expected http://127.0.0.1:PORT/..., got {url!r}")
    host = parts.hostname
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigurationError(
            "url", f"shoal load only targets loopback addresses (127.0.0.0/8, ::1, localhost); "
                   f"{host!r} is not one")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadPlan:
    """What to send: ``rate`` requests/s for ``duration`` seconds (both bounded)."""

    url: str
    rate: float
    duration: float
    method: str = "GET"
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0
    max_in_flight: int = 256

    def __post_init__(self) -> None:
        check_loopback(self.url)
        if not 0 < self.rate <= MAX_RATE:
            raise ConfigurationError("rate", f"must be within (0, {MAX_RATE:g}] req/s")
        if not 0 < self.duration <= MAX_DURATION:
            raise ConfigurationError("duration", f"must be within (0, {MAX_DURATION:g}] s")
        if not 0 < self.timeout <= 120 or self.max_in_flight < 1:
            raise ConfigurationError("timeout", "must be within (0, 120] s (max_in_flight >= 1)")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0..1) of ascending ``sorted_values``."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(slots=True)
class LoadReport:
    """The outcome of a run. ``errors`` counts by kind: ``status_503``, ``connect``,
    ``timeout``, ``disconnected``, ``skipped`` (not sent: too many in flight) ..."""

    url: str
    method: str
    rate: float
    duration: float
    elapsed: float = 0.0
    sent: int = 0
    ok: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def ms(q: float) -> float | None:
            value = percentile(lat, q)
            return None if value is None else round(value * 1000, 2)

        return {
            "url": self.url, "method": self.method, "target_rate": self.rate,
            "duration_s": self.duration, "elapsed_s": round(self.elapsed, 3),
            "sent": self.sent, "ok": self.ok, "failed": self.failed,
            "rps": round(self.sent / self.elapsed, 2) if self.elapsed else 0.0,
            "ok_rps": round(self.ok / self.elapsed, 2) if self.elapsed else 0.0,
            "errors": dict(sorted(self.errors.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p50_ms": ms(0.50), "p90_ms": ms(0.90), "p99_ms": ms(0.99), "max_ms": ms(1.0),
        }


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                  | aiohttp.ClientOSError):
        return "disconnected"
    return type(exc).__name__


async def run_load(plan: LoadPlan, *, on_response: Callable[[int, float], None] | None = None,
                   is_ok: Callable[[int], bool] = lambda status: status < 400,
                   should_stop: Callable[[], bool] | None = None) -> LoadReport:
    """Send ``plan`` and report. ``on_response(status, latency)`` sees each answer;
    ``should_stop()`` (checked before each request) ends the run early."""
    report = LoadReport(url=plan.url, method=plan.method, rate=plan.rate,
                        duration=plan.duration)
    total = max(1, int(plan.rate * plan.duration))
    interval = 1.0 / plan.rate
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    connector = aiohttp.TCPConnector(limit=plan.max_in_flight, force_close=False)
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        nonlocal in_flight
        try:
            async with session.request(plan.method, plan.url, data=plan.body,
                                       headers=dict(plan.headers)) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            report.errors[_error_kind(exc)] += 1
            return
        finally:
            in_flight -= 1
        latency = time.monotonic() - due
        report.statuses[status] += 1
        if is_ok(status):
            report.ok += 1
            report.latencies.append(latency)
        else:
            report.errors[f"status_{status}"] += 1
        if on_response is not None:
            on_response(status, latency)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.monotonic()
        for i in range(total):
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if should_stop is not None and should_stop():
                break
            if in_flight >= plan.max_in_flight:
                report.errors["skipped"] += 1
                continue
            in_flight += 1
            report.sent += 1
            task = asyncio.create_task(one(session, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks))
        report.elapsed = time.monotonic() - start
    return report


def format_table(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows (label, value) for a human-readable summary."""
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    errors = ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "none"
    return [
        ("target", f"{report['method']} {report['url']}"),
        ("sent", f"{report['sent']} in {report['elapsed_s']:.1f}s "
                 f"({report['rps']:.1f} req/s, target {report['target_rate']:g})"),
        ("ok", f"{report['ok']} ({report['ok_rps']:.1f} req/s)"),
        ("errors", errors),
        ("latency p50", fmt(report["p50_ms"])),
        ("latency p99", fmt(report["p99_ms"])),
        ("latency max", fmt(report["max_ms"])),
    ]
