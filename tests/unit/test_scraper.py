"""The scraper's pure core: exposition parsing, rates, quantiles, per-replica averages."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal.platform._registry import READY, InstanceRecord, Registry
from shoal.platform._scraper import Sample, Scraper, _add, histogram_quantile, parse_exposition

BUCKETS = (0.01, 0.1, 1.0)


class FakeReplica:
    """A process-like registry of the chassis' metric names."""

    def __init__(self) -> None:
        self.reg = CollectorRegistry()
        self.requests = Counter("http_requests", "", ["service", "method", "route", "status"],
                                registry=self.reg)
        self.duration = Histogram("http_request_duration_seconds", "",
                                  ["service", "method", "route", "status_class"],
                                  buckets=BUCKETS, registry=self.reg)
        self.in_flight = Gauge("http_requests_in_flight", "", ["service"], registry=self.reg)
        self.cpu = Counter("process_cpu_seconds", "", registry=self.reg)
        self.breaker = Gauge("shoal_client_breaker_state", "", ["service", "upstream"],
                             registry=self.reg)
        self.ejections = Counter("shoal_client_ejections", "", ["service", "upstream"],
                                 registry=self.reg)

    def serve(self, n: int, status: str = "200", seconds: float = 0.05) -> None:
        for _ in range(n):
            self.requests.labels("orders", "GET", "/orders", status).inc()
            self.duration.labels("orders", "GET", "/orders", status[0] + "xx").observe(seconds)

    def text(self) -> str:
        return generate_latest(self.reg).decode()


def record(instance_id: str) -> InstanceRecord:
    return InstanceRecord(id=instance_id, service="orders", port=1, state=READY, pid=1)


@pytest.fixture
def registry() -> Registry:
    reg = Registry()
    asyncio.run(reg.upsert(record("orders-1")))
    asyncio.run(reg.upsert(record("orders-2")))
    return reg


def test_parse_exposition_sums_requests_errors_buckets_and_reads_breakers() -> None:
    r = FakeReplica()
    r.serve(8)
    r.serve(2, "503", 0.5)
    r.in_flight.labels("orders").set(3)
    r.breaker.labels("orders", "users").set(1)
    r.ejections.labels("orders", "users").inc(2)
    r.cpu.inc(1.5)
    s = parse_exposition(r.text(), at=10.0)
    assert (s.requests, s.errors, s.in_flight, s.cpu_seconds, s.ejections) == (10, 2, 3, 1.5, 2)
    assert s.buckets[0.1] == 8
    assert s.buckets[float("inf")] == 10
    assert s.breakers == {"users": 1}


def test_requests_the_client_abandoned_are_no_errors() -> None:
    # 499: the client left before the answer (the gateway and the chassis count it so)
    r = FakeReplica()
    r.serve(6)
    r.serve(3, "499")
    r.serve(1, "500")
    s = parse_exposition(r.text(), at=10.0)
    assert (s.requests, s.errors) == (10, 1)


def test_the_fast_path_reads_what_prometheus_clients_parser_reads() -> None:
    r = FakeReplica()
    r.serve(5)
    r.serve(3, "500", 0.5)
    r.in_flight.labels("orders").set(2)
    r.breaker.labels("orders", 'we"ird').set(2)
    r.ejections.labels("orders", "users").inc()
    text = r.text() + 'http_requests_total{service="x",status="503"} 4 1700000000000\n'
    reference = Sample(at=1.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            _add(reference, s.name, s.labels, s.value)
    assert parse_exposition(text, at=1.0) == reference


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = {0.1: 50.0, 0.2: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 0.0, float("inf"): 10.0}) == pytest.approx(0.1)


def test_service_stats_sums_rates_over_ready_replicas_and_averages_per_replica(
        registry: Registry) -> None:
    scraper = Scraper(registry, interval=1.0, rate_window=10.0)
    a, b = FakeReplica(), FakeReplica()
    for t in range(3):
        a.in_flight.labels("orders").set(2)
        b.in_flight.labels("orders").set(4)
        scraper.ingest("orders-1", "orders", parse_exposition(a.text(), at=float(t)))
        scraper.ingest("orders-2", "orders", parse_exposition(b.text(), at=float(t)))
        a.serve(10)
        b.serve(9)
        b.serve(1, "500", 0.5)
        a.cpu.inc(0.5)
    stats = scraper.service_stats("orders")
    assert stats is not None
    assert stats.rps == pytest.approx(20.0)  # (10 + 10) requests per second, 2 scrapes apart
    assert stats.error_ratio == pytest.approx(1 / 20)
    assert stats.ready_replicas == 2
    assert stats.in_flight == 6
    assert stats.cpu_percent == pytest.approx(50.0)
    assert stats.p50 is not None
    assert 0.01 < stats.p50 <= 0.1
    assert stats.p99 is not None
    assert stats.p99 > 0.1
    assert scraper.per_replica("orders", "in_flight") == pytest.approx(3.0)
    assert scraper.per_replica("orders", "rps") == pytest.approx(10.0)
    assert scraper.per_replica("orders", "cpu") == pytest.approx(25.0)
    assert scraper.service_stats("users") is None


def test_a_counter_reset_counts_from_zero_instead_of_a_negative_rate(registry: Registry) -> None:
    scraper = Scraper(registry, interval=1.0)
    old, new = FakeReplica(), FakeReplica()
    old.serve(100)
    scraper.ingest("orders-1", "orders", parse_exposition(old.text(), at=0.0))
    new.serve(5)  # the process restarted: its counters began again
    scraper.ingest("orders-1", "orders", parse_exposition(new.text(), at=1.0))
    stats = scraper.service_stats("orders")
    assert stats is not None
    assert stats.rps == pytest.approx(5.0)


def test_rates_use_only_the_rate_window_and_forget_drops_gone_instances(
        registry: Registry) -> None:
    scraper = Scraper(registry, interval=1.0, rate_window=2.0)
    r = FakeReplica()
    for t in range(6):
        r.serve(100 if t < 3 else 1)
        scraper.ingest("orders-1", "orders", parse_exposition(r.text(), at=float(t)))
    stats = scraper.service_stats("orders")
    assert stats is not None
    assert stats.rps == pytest.approx(1.0)  # the burst is outside the window
    scraper.forget(["orders-2"])
    assert scraper.service_stats("orders") is None
    assert scraper.per_replica("orders", "rps") is None


def test_snapshot_lists_every_service_with_history(registry: Registry) -> None:
    scraper = Scraper(registry, interval=1.0)
    r = FakeReplica()
    for t in range(3):
        r.serve(3)
        scraper.ingest("orders-1", "orders", parse_exposition(r.text(), at=float(t)))
        scraper.record_history()
    snap = scraper.snapshot(with_history=True)
    assert snap["services"]["orders"]["ready_replicas"] == 1
    assert len(snap["services"]["orders"]["history"]) == 3
