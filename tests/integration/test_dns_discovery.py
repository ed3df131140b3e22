"""The ``dns`` discovery backend against a real UDP nameserver whose answers the test controls."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Sequence

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from shoal._errors import ConfigurationError
from shoal.discovery import Endpoint, resolver_from_config
from shoal.discovery._dns import DnsResolver, LookupFailed, parse_dns_options

pytestmark = pytest.mark.integration


class Nameserver:
    """A tiny authoritative server on 127.0.0.1: ``records[name] = (addresses, ttl)``; a name
    missing from ``records`` is NXDOMAIN; ``silent`` drops every query (a timeout)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[list[str], int]] = {}
        self.queries: list[str] = []
        self.silent = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            question = query.question[0]
            name = question.name.to_text(omit_final_dot=True)
            self.queries.append(name)
            if self.silent:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            if name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A and self.records[name][0]:
                addresses, ttl = self.records[name]
                response.answer.append(
                    dns.rrset.from_text(question.name, ttl, "IN", "A", *addresses))
            self.sock.sendto(response.to_wire(), peer)

    def count(self, name: str) -> int:
        return self.queries.count(name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def nameserver() -> Iterator[Nameserver]:
    server = Nameserver()
    yield server
    server.close()


class Tables:
    """Collects what a subscription delivers."""

    def __init__(self) -> None:
        self.seen: list[list[str]] = []
        self.changed = threading.Condition()

    def __call__(self, table: Sequence[Endpoint]) -> None:
        with self.changed:
            self.seen.append([e.url for e in table])
            self.changed.notify_all()

    def wait_for(self, urls: list[str], timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.seen or self.seen[-1] != urls:
                left = deadline - time.monotonic()
                assert left > 0, f"never got {urls}; saw {self.seen}"
                self.changed.wait(left)


def resolver(server: Nameserver, extra: str = "") -> DnsResolver:
    config = (f"dns:nameserver=127.0.0.1:{server.port},interval=0.3,min_interval=0.05,"
              f"timeout=0.2{extra}")
    made = resolver_from_config(config)
    assert isinstance(made, DnsResolver)
    return made


def test_first_subscription_delivers_the_a_records_as_endpoints(nameserver):
    nameserver.records["users"] = (["10.0.0.2", "10.0.0.1"], 30)
    r = resolver(nameserver)
    try:
        tables = Tables()
        r.subscribe("users", tables)
        # Delivered at once (one bounded query), sorted, on the configured port.
        assert tables.seen == [["http://10.0.0.1:8000", "http://10.0.0.2:8000"]]
    finally:
        r.close()


def test_changed_answers_reach_subscribers_in_the_background(nameserver):
    nameserver.records["orders"] = (["10.0.1.1"], 1)
    r = resolver(nameserver)
    try:
        tables = Tables()
        r.subscribe("orders", tables)
        nameserver.records["orders"] = (["10.0.1.1", "10.0.1.2"], 1)
        tables.wait_for(["http://10.0.1.1:8000", "http://10.0.1.2:8000"])
        nameserver.records["orders"] = (["10.0.1.2"], 1)
        tables.wait_for(["http://10.0.1.2:8000"])
        assert r.endpoints("orders") == (Endpoint("http://10.0.1.2:8000"),)
    finally:
        r.close()


def test_host_template_port_and_scheme_shape_the_endpoints(nameserver):
    nameserver.records["users-headless"] = (["10.0.2.1"], 30)
    r = resolver(nameserver, ",host={service}-headless,port=9000,scheme=https")
    try:
        tables = Tables()
        r.subscribe("users", tables)
        assert tables.seen == [["https://10.0.2.1:9000"]]
    finally:
        r.close()


def test_nxdomain_empties_the_table(nameserver):
    nameserver.records["users"] = (["10.0.3.1"], 1)
    r = resolver(nameserver)
    try:
        tables = Tables()
        r.subscribe("users", tables)
        del nameserver.records["users"]
        tables.wait_for([])
    finally:
        r.close()


def test_an_unanswered_query_keeps_the_last_table(nameserver):
    nameserver.records["users"] = (["10.0.4.1"], 1)
    r = resolver(nameserver)
    try:
        tables = Tables()
        r.subscribe("users", tables)
        nameserver.silent = True
        before = nameserver.count("users")
        deadline = time.monotonic() + 3
        while nameserver.count("users") < before + 2:
            assert time.monotonic() < deadline, "the resolver stopped retrying"
            time.sleep(0.02)
        assert tables.seen == [["http://10.0.4.1:8000"]]
        nameserver.silent = False
        nameserver.records["users"] = (["10.0.4.2"], 1)
        tables.wait_for(["http://10.0.4.2:8000"])
    finally:
        r.close()


def test_re_resolution_is_paced_by_ttl_within_bounds_not_by_requests(nameserver):
    nameserver.records["short"] = (["10.0.5.1"], 0)     # TTL 0: floored at min_interval
    nameserver.records["long"] = (["10.0.5.2"], 3600)   # long TTL: capped at interval
    r = resolver(nameserver)
    try:
        r.subscribe("short", Tables())
        r.subscribe("long", Tables())
        for _ in range(1000):  # reading the table never queries
            r.endpoints("short")
        time.sleep(0.65)
    finally:
        r.close()
    short, long = nameserver.count("short"), nameserver.count("long")
    assert 6 <= short <= 15, short   # ~0.65 s / 0.05 s, with scheduling slack
    assert 2 <= long <= 4, long      # first query, then every 0.3 s


def test_close_stops_the_background_thread(nameserver):
    nameserver.records["users"] = (["10.0.6.1"], 0)
    r = resolver(nameserver)
    r.subscribe("users", Tables())
    r.close()
    r.close()  # idempotent
    settled = nameserver.count("users")
    time.sleep(0.2)
    assert nameserver.count("users") == settled
    assert not any(t.name == "shoal-dns" and t.is_alive() for t in threading.enumerate())


def test_cancelled_subscription_stops_receiving(nameserver):
    nameserver.records["users"] = (["10.0.7.1"], 0)
    r = resolver(nameserver)
    try:
        kept, cancelled = Tables(), Tables()
        r.subscribe("users", kept)
        r.subscribe("users", cancelled).cancel()
        nameserver.records["users"] = (["10.0.7.2"], 0)
        kept.wait_for(["http://10.0.7.2:8000"])
        assert cancelled.seen == [["http://10.0.7.1:8000"]]
    finally:
        r.close()


def test_injected_lookup_replaces_dnspython():
    answers = {"users": (["10.9.0.1"], 30.0)}
    calls: list[str] = []

    def lookup(name: str) -> tuple[list[str], float]:
        calls.append(name)
        if name not in answers:
            raise LookupFailed("no such server")
        return answers[name]

    r = DnsResolver(parse_dns_options("dns:port=8001"), lookup=lookup)
    try:
        tables = Tables()
        r.subscribe("users", tables)
        r.subscribe("orders", Tables())
        assert tables.seen == [["http://10.9.0.1:8001"]]
        assert r.endpoints("orders") == ()
        assert calls[:2] == ["users", "orders"]
    finally:
        r.close()


@pytest.mark.parametrize(("config", "fragment"), [
    ("dns:port=http", "not a port"),
    ("dns:interval=0", "must be in (0, 3600]"),
    ("dns:bogus=1", "unknown dns option 'bogus'"),
    ("dns:port", "expected key=value"),
    ("dns:host=http://users", "not a name"),
    ("dns:interval=1,min_interval=2", "min_interval must not exceed interval"),
])
def test_bad_options_name_the_setting(config, fragment):
    with pytest.raises(ConfigurationError) as info:
        resolver_from_config(config)
    assert "SHOAL_DISCOVERY" in str(info.value)
    assert fragment in str(info.value)


def test_plain_dns_uses_the_defaults():
    options = parse_dns_options("dns")
    assert (options.host, options.port, options.scheme, options.interval) == (
        "{service}", 8000, "http", 5.0)
    assert parse_dns_options("dns:nameserver=[::1]:5353").nameserver_port == 5353
