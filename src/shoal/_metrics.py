"""The process-wide Prometheus registry every Shoal metric lives in.

One registry per process, exposed at ``GET /metrics``: server-side HTTP metrics, client-side
call metrics and process metrics. Metric objects are created once, labelled by ``service``.
"""

from __future__ import annotations

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

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests served, by route template and status code.",
    ["service", "method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time to serve an HTTP request, by route template and status class.",
    ["service", "method", "route", "status_class"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
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

CLIENT_CALLS = Counter(
    "shoal_client_calls",
    "Calls to an upstream service by final outcome (success, client_error, server_error, "
    "connect_error, timeout, deadline_exceeded, circuit_open, bulkhead_full, no_instance, "
    "cancelled).",
    ["service", "upstream", "outcome"],
    registry=REGISTRY,
)
CLIENT_CALL_DURATION = Histogram(
    "shoal_client_call_duration_seconds",
    "Time of a call to an upstream service, all attempts and backoff included.",
    ["service", "upstream"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
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
