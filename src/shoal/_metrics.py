"""The process-wide Prometheus registry every Shoal metric lives in.

One registry per process, exposed at ``GET /metrics``: server-side HTTP metrics, client-side
call metrics and process metrics. Metric objects are created once, labelled by ``service``.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
    values,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# ``*_created`` series double the exposition size and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

#: prometheus_client's multiprocess mode (values in shared files): callback gauges do not work.
MULTIPROCESS: bool = bool(getattr(values.ValueClass, "_multiprocess", False))

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Latency buckets (seconds) tuned for service-to-service calls: 1 ms .. 10 s.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)



class CounterValue:
    """One labelled counter: ``inc`` is an addition under a lock, nothing more."""

    __slots__ = ("_lock", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount


class HistogramValue:
    """One labelled histogram: ``observe`` adds to the sum and one bucket (found by bisection)
    under a lock; cumulative bucket counts are computed when scraped."""

    __slots__ = ("_bounds", "_lock", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._lock = threading.Lock()
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        with self._lock:
            self.sum += amount
            self.counts[bisect_left(self._bounds, amount)] += 1


class _Family(Collector):
    """A counter or histogram family whose children are plain objects (the per-request
    metrics: prometheus_client's own children cost several times more per update, through
    layers of checks, on every request of every service). The exposition is the same."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float] | None = None) -> None:
        self._name = name
        self._doc = documentation
        self._labelnames = list(labelnames)
        self._buckets = tuple(buckets) if buckets is not None else None
        #: The ``le`` label of each bucket, +Inf last, as prometheus-client writes them.
        self._le: list[str] = [] if buckets is None else [
            floatToGoString(b) for b in (*buckets, float("inf"))  # type: ignore[no-untyped-call]
        ]
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        REGISTRY.register(self)

    def labels(self, *values: str) -> Any:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = (CounterValue() if self._buckets is None
                             else HistogramValue(self._buckets))
                    self._children[key] = child
        return child

    def describe(self) -> Iterator[Metric]:
        yield self._empty()

    def _empty(self) -> CounterMetricFamily | HistogramMetricFamily:
        if self._buckets is None:
            return CounterMetricFamily(self._name, self._doc, labels=self._labelnames)
        return HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        for key, child in list(self._children.items()):
            if isinstance(family, CounterMetricFamily):
                family.add_metric(list(key), child.value)
                continue
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._le, list(child.counts), strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(key), buckets, child.sum)
        yield family


def _counter(name: str, documentation: str, labelnames: Sequence[str]) -> Any:
    if MULTIPROCESS:  # values must live in prometheus_client's shared files
        return Counter(name, documentation, labelnames, registry=REGISTRY)
    return _Family(name, documentation, labelnames)


def _histogram(name: str, documentation: str, labelnames: Sequence[str]) -> Any:
    if MULTIPROCESS:
        return Histogram(name, documentation, labelnames, buckets=LATENCY_BUCKETS,
                         registry=REGISTRY)
    return _Family(name, documentation, labelnames, buckets=LATENCY_BUCKETS)


HTTP_REQUESTS = _counter(
    "http_requests",
    "HTTP requests served, by route template and status code.",
    ["service", "method", "route", "status"],
)
HTTP_DURATION = _histogram(
    "http_request_duration_seconds",
    "Time to serve an HTTP request, by route template and status class.",
    ["service", "method", "route", "status_class"],
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight",
    "HTTP requests being served right now.",
    ["service"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
HTTP_EXCEPTIONS = Counter(
    "http_request_exceptions",
    "Unhandled exceptions raised while serving a request (answered with 500).",
    ["service", "route", "exception"],
    registry=REGISTRY,
)
READINESS = Gauge(
    "shoal_ready",
    "1 when the instance reports ready, 0 when not (including while draining).",
    ["service"],
    registry=REGISTRY,
)


def render() -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(REGISTRY)

# --- client-side (shoal.client); ``service`` is the calling service, ``upstream`` the one called.

CLIENT_CALLS = _counter(
    "shoal_client_calls",
    "Calls to an upstream service by final outcome (success, client_error, server_error, "
    "connect_error, timeout, deadline_exceeded, circuit_open, bulkhead_full, no_instance, "
    "cancelled).",
    ["service", "upstream", "outcome"],
)
CLIENT_CALL_DURATION = _histogram(
    "shoal_client_call_duration_seconds",
    "Time of a call to an upstream service, all attempts and backoff included.",
    ["service", "upstream"],
)
CLIENT_IN_FLIGHT = Gauge(
    "shoal_client_in_flight",
    "Calls to an upstream service in flight right now.",
    ["service", "upstream"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
CLIENT_RETRIES = Counter(
    "shoal_client_retries",
    "Retries sent to an upstream service, by the reason of the retried attempt.",
    ["service", "upstream", "reason"],
    registry=REGISTRY,
)
CLIENT_RETRY_BUDGET_EXHAUSTED = Counter(
    "shoal_client_retry_budget_exhausted",
    "Retries that were permitted by the retry policy but refused by the client's retry budget.",
    ["service", "upstream"],
    registry=REGISTRY,
)
CLIENT_BREAKER_STATE = Gauge(
    "shoal_client_breaker_state",
    "Circuit breaker state per upstream service: 0 closed, 1 open, 2 half-open.",
    ["service", "upstream"],
    registry=REGISTRY,
    multiprocess_mode="liveall",
)
CLIENT_BREAKER_TRANSITIONS = Counter(
    "shoal_client_breaker_transitions",
    "Circuit breaker state transitions per upstream service.",
    ["service", "upstream", "from_state", "to_state"],
    registry=REGISTRY,
)
CLIENT_EJECTIONS = Counter(
    "shoal_client_ejections",
    "Instances of an upstream service ejected by outlier detection.",
    ["service", "upstream"],
    registry=REGISTRY,
)
CLIENT_EJECTED_INSTANCES = Gauge(
    "shoal_client_ejected_instances",
    "Instances of an upstream service currently ejected by outlier detection.",
    ["service", "upstream"],
    registry=REGISTRY,
    multiprocess_mode="liveall",
)
CLIENT_FALLBACKS = Counter(
    "shoal_client_fallbacks",
    "Calls answered by the call site's declared fallback (a degraded result), by error type.",
    ["service", "upstream", "error"],
    registry=REGISTRY,
)
