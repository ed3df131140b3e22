"""The control plane's metrics scraper: every ready instance's ``/metrics``, a bounded window.

Every ``interval`` seconds the :class:`Scraper` fetches ``/metrics`` from each *ready* instance in
the :class:`~shoal.platform._registry.Registry`, parses it with prometheus-client's parser and
keeps, per instance, a bounded deque of :class:`Sample` (the few totals the platform reads).
Rates are computed the way PromQL's ``rate()`` does over the last ``rate_window`` seconds
(counter resets included); latency quantiles the way ``histogram_quantile`` does, from the
bucket increases summed over a service's ready instances.

Only the lines of the metric families read here are handed to the parser: an exposition is
mostly process, GC and per-route series, and skipping them keeps scraping 50 instances a small
fraction of one core (``bench/logs.py`` measures it).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from shoal._logging import get_logger
from shoal.platform._registry import READY, Registry

log = get_logger("shoal.platform")

#: The metric families the scraper reads (sample names, as exposed).
_WANTED = (
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_requests_in_flight",
    "process_cpu_seconds_total",
    "shoal_client_breaker_state",
    "shoal_client_ejections_total",
    "shoal_client_retries_total",
)
PerReplicaMetric = Literal["in_flight", "rps", "cpu"]
#: The one label each family is read by (the others are summed over).
_KEY_OF = {"http_requests_total": 'status="', "http_request_duration_seconds_bucket": 'le="',
           "shoal_client_breaker_state": 'upstream="'}


@dataclass(slots=True)
class Sample:
    """What one scrape of one instance says (counters are cumulative, as exposed)."""

    at: float
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)
    in_flight: float = 0.0
    cpu_seconds: float = 0.0
    breakers: dict[str, int] = field(default_factory=dict)
    ejections: float = 0.0
    retries: float = 0.0


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """A service's numbers over the scraper's rate window (ready replicas only).

    ``p50``/``p95``/``p99`` are seconds, ``None`` when no request finished in the window.
    ``breakers`` maps an upstream to the worst state any replica reports for it
    (0 closed, 1 open, 2 half-open, open winning). ``ejections`` and ``retries`` are per second.
    """

    service: str
    rps: float
    error_ratio: float
    p50: float | None
    p95: float | None
    p99: float | None
    in_flight: float
    ready_replicas: int
    cpu_percent: float
    breakers: dict[str, int]
    ejections: float
    retries: float = 0.0
    restarts: int = 0
    at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label(body: str, key: str) -> str | None:
    # ``body`` is ``{k="v",...``: a key starts right after the brace or a comma.
    start = body.find("," + key)
    if start < 0:
        start = body.find("{" + key)
        if start < 0:
            return None
    start += len(key) + 1
    return body[start:body.index('"', start)]


def _add(sample: Sample, name: str, labels: dict[str, str], value: float) -> None:
    if name == "http_requests_total":
        sample.requests += value
        if labels.get("status", "").startswith("5"):
            sample.errors += value
    elif name == "http_request_duration_seconds_bucket":
        le = float(labels["le"])
        sample.buckets[le] = sample.buckets.get(le, 0.0) + value
    elif name == "http_requests_in_flight":
        sample.in_flight += value
    elif name == "process_cpu_seconds_total":
        sample.cpu_seconds = value
    elif name == "shoal_client_breaker_state":
        upstream = labels.get("upstream", "?")
        sample.breakers[upstream] = _worse(sample.breakers.get(upstream), int(value))
    elif name == "shoal_client_ejections_total":
        sample.ejections += value
    elif name == "shoal_client_retries_total":
        sample.retries += value


def parse_exposition(text: str, at: float) -> Sample:
    """Reduce a Prometheus text exposition to a :class:`Sample` (unknown families ignored).

    The lines the chassis writes (``name{k="v",...} value``, no escapes, no timestamp) are read
    with a few string operations; any other wanted line goes through prometheus-client's
    parser, which also defines the expected result (a unit test compares the two)."""
    sample = Sample(at=at)
    others: list[str] = []
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        if "\\" in line:
            others.append(line)
            continue
        try:
            brace = line.find("{")
            if brace < 0:
                name, _, rest = line.partition(" ")
                labels: dict[str, str] = {}
            else:
                name = line[:brace]
                close = line.rindex("}")
                rest = line[close + 1:]
                body = line[brace:close]
                key = _KEY_OF.get(name)
                value_of_key = _label(body, key) if key else None
                labels = {key[:-2]: value_of_key} if key and value_of_key is not None else {}
            value_text = rest.split()
            value = float(value_text[0]) if len(value_text) == 1 else None
        except ValueError:
            value = None
        if value is None:  # a timestamp, an escape, garbage: the full parser decides
            others.append(line)
        else:
            _add(sample, name, labels, value)
    if others:
        for family in text_string_to_metric_families("\n".join(others) + "\n"):
            for s in family.samples:
                _add(sample, s.name, s.labels, s.value)
    return sample


def _worse(a: int | None, b: int) -> int:
    # open (1) is worse than half-open (2), which is worse than closed (0)
    rank = {0: 0, 2: 1, 1: 2}
    return b if a is None or rank.get(b, 0) > rank.get(a, 0) else a


def _increase(first: float, last: float) -> float:
    return last if last < first else last - first  # a drop means the process restarted


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's ``histogram_quantile`` over cumulative ``{le: count}``; None when empty."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


class Scraper:
    """Scrapes every ready instance on an interval and answers per-service numbers.

    ``run()`` loops until cancelled (the control plane owns the task). ``ingest()`` is the
    I/O-free core the loop feeds, so tests drive it with a fake clock.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        interval: float | None = None,
        rate_window: float = 10.0,
        window: float = 300.0,
        timeout: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        # SHOAL_SCRAPE_INTERVAL trades freshness for CPU (bench/logs.py: 50 instances cost
        # about 6.7% of a core every 2 s, 4.8% every 3 s, 2.7% every 5 s).
        self.interval = interval if interval is not None else float(
            os.environ.get("SHOAL_SCRAPE_INTERVAL", "3.0"))
        interval = self.interval
        self.rate_window = rate_window
        self.window = window
        self.timeout = timeout
        self.clock = clock
        self.wall_clock = wall_clock
        per_instance = max(3, math.ceil(rate_window / interval) + 2)
        self._maxlen = per_instance
        self._samples: dict[str, deque[Sample]] = {}
        self._service_of: dict[str, str] = {}
        self._history: dict[str, deque[ServiceStats]] = {}
        self._history_len = max(10, math.ceil(window / interval))
        self.scrapes = 0
        self.scrape_errors = 0
        self.last_scrape_seconds = 0.0

    # -- the I/O-free core -----------------------------------------------------------------

    def ingest(self, instance_id: str, service: str, sample: Sample) -> None:
        """Add one scrape of ``instance_id`` (a ``service`` replica)."""
        series = self._samples.get(instance_id)
        if series is None:
            series = self._samples[instance_id] = deque(maxlen=self._maxlen)
        series.append(sample)
        self._service_of[instance_id] = service

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the series of every instance not in ``keep`` (gone, or no longer ready)."""
        keep = set(keep)
        for instance_id in [i for i in self._samples if i not in keep]:
            del self._samples[instance_id]
            self._service_of.pop(instance_id, None)

    def _rates(self, instance_id: str) -> tuple[Sample, Sample] | None:
        series = self._samples.get(instance_id)
        if not series or len(series) < 2:
            return None
        last = series[-1]
        first = next((s for s in series if last.at - s.at <= self.rate_window + 1e-9), series[0])
        if first is last:
            first = series[-2]
        return first, last

    def services(self) -> list[str]:
        return sorted(set(self._service_of.values()) | set(self.registry.services()))

    def service_stats(self, service: str) -> ServiceStats | None:
        """The numbers of ``service`` now, or None when none of its ready replicas was scraped.

        A replica scraped only once counts in ``in_flight`` and ``ready_replicas`` but not yet
        in rates (a rate needs two scrapes)."""
        instances = [i for i, s in self._service_of.items() if s == service]
        if not instances:
            return None
        rps = errors = in_flight = cpu = ejections = retries = 0.0
        buckets: dict[float, float] = {}
        breakers: dict[str, int] = {}
        for instance_id in instances:
            last = self._samples[instance_id][-1]
            in_flight += last.in_flight
            for upstream, state in last.breakers.items():
                breakers[upstream] = _worse(breakers.get(upstream), state)
            pair = self._rates(instance_id)
            if pair is None:
                continue
            first, last = pair
            dt = max(last.at - first.at, 1e-9)
            rps += _increase(first.requests, last.requests) / dt
            errors += _increase(first.errors, last.errors) / dt
            cpu += _increase(first.cpu_seconds, last.cpu_seconds) / dt * 100.0
            ejections += _increase(first.ejections, last.ejections) / dt
            retries += _increase(first.retries, last.retries) / dt
            reset = last.requests < first.requests
            for le, count in last.buckets.items():
                before = 0.0 if reset else first.buckets.get(le, 0.0)
                buckets[le] = buckets.get(le, 0.0) + max(0.0, count - before)
        restarts = sum(r.restarts for r in self.registry.instances(service))
        return ServiceStats(
            service=service,
            rps=rps,
            error_ratio=errors / rps if rps > 0 else 0.0,
            p50=histogram_quantile(0.50, buckets),
            p95=histogram_quantile(0.95, buckets),
            p99=histogram_quantile(0.99, buckets),
            in_flight=in_flight,
            ready_replicas=len(instances),
            cpu_percent=cpu,
            breakers=breakers,
            ejections=ejections,
            retries=retries,
            restarts=restarts,
            at=self.wall_clock(),
        )

    def per_replica(self, service: str, metric: PerReplicaMetric) -> float | None:
        """``metric`` averaged over the ready replicas (``cpu`` in percent of one core)."""
        stats = self.service_stats(service)
        if stats is None or stats.ready_replicas == 0:
            return None
        total = {"in_flight": stats.in_flight, "rps": stats.rps, "cpu": stats.cpu_percent}[metric]
        return total / stats.ready_replicas

    def history(self, service: str) -> list[ServiceStats]:
        """The stats computed after each scrape round, oldest first (bounded by ``window``)."""
        return list(self._history.get(service, ()))

    def snapshot(self, *, with_history: bool = False) -> dict[str, Any]:
        """Every service's stats (what ``GET /v1/metrics`` answers)."""
        services: dict[str, Any] = {}
        for name in self.services():
            stats = self.service_stats(name)
            entry: dict[str, Any] = stats.as_dict() if stats else {"service": name}
            if with_history:
                entry["history"] = [
                    {"at": round(h.at, 3), "rps": h.rps, "error_ratio": h.error_ratio,
                     "p50": h.p50, "p95": h.p95, "p99": h.p99, "in_flight": h.in_flight}
                    for h in self.history(name)]
            services[name] = entry
        return {"interval": self.interval, "rate_window": self.rate_window,
                "scrapes": self.scrapes, "scrape_errors": self.scrape_errors,
                "last_scrape_seconds": self.last_scrape_seconds, "services": services}

    def record_history(self) -> None:
        for name in self.services():
            stats = self.service_stats(name)
            if stats is None:
                continue
            series = self._history.get(name)
            if series is None:
                series = self._history[name] = deque(maxlen=self._history_len)
            series.append(stats)

    # -- the I/O shell ---------------------------------------------------------------------

    async def _scrape_one(self, http: aiohttp.ClientSession, instance_id: str, service: str,
                          url: str) -> None:
        try:
            async with http.get(url + "/metrics",
                                timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                if resp.status != 200:
                    self.scrape_errors += 1
                    return
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            self.scrape_errors += 1
            return
        try:
            sample = parse_exposition(text, self.clock())
        except ValueError:
            self.scrape_errors += 1
            log.warning("scrape.unparseable", instance=instance_id)
            return
        self.ingest(instance_id, service, sample)

    async def scrape_once(self, http: aiohttp.ClientSession) -> None:
        """One round: every ready instance, concurrently; then the history point."""
        started = time.perf_counter()
        ready = [r for r in self.registry.instances() if r.state == READY]
        self.forget(r.id for r in ready)
        await asyncio.gather(*(self._scrape_one(http, r.id, r.service, r.url) for r in ready))
        self.forget(r.id for r in self.registry.instances() if r.state == READY)
        self.scrapes += 1
        self.record_history()
        self.last_scrape_seconds = time.perf_counter() - started

    async def run(self) -> None:
        """Scrape every ``interval`` seconds until cancelled."""
        connector = aiohttp.TCPConnector(limit=32, keepalive_timeout=30)
        async with aiohttp.ClientSession(connector=connector) as http:
            while True:
                started = self.clock()
                try:
                    await self.scrape_once(http)
                except Exception as exc:  # noqa: BLE001 - one bad round must not end the loop
                    log.warning("scrape.round_failed", error=repr(exc))
                await asyncio.sleep(max(0.05, self.interval - (self.clock() - started)))
