"""The etcd resolver's watching loop, over a scripted client: resume, fail over, re-list."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

from shoal.discovery import (
    EtcdCompactedError,
    EtcdError,
    EtcdResolver,
    instance_key,
    resolver_from_config,
)
from shoal.discovery._etcd_table import encode_record

PREFIX = "/shoal/services/"


def kv(instance: str, port: int, revision: int) -> dict[str, str]:
    key = instance_key(PREFIX, "users", instance).encode()
    value = encode_record(service="users", instance=instance, url=f"http://h:{port}")
    return {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode(),
            "mod_revision": str(revision)}


class BlockingStream:
    """A watch that stays open until interrupted."""

    endpoint = "http://e1"

    def __init__(self, responses=(), gate: threading.Event | None = None) -> None:
        self._responses = list(responses)
        self._stop = threading.Event()
        self._gate = gate

    def __iter__(self) -> Iterator[dict]:
        if self._gate is not None:
            self._gate.wait(10)
        yield from self._responses
        self._stop.wait(10)
        raise EtcdError("closed", endpoint=self.endpoint)

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()


class FailingStream(BlockingStream):
    def __init__(self, responses, error: EtcdError) -> None:
        super().__init__(responses)
        self._error = error

    def __iter__(self) -> Iterator[dict]:
        yield from self._responses
        raise self._error


class ScriptedClient:
    """Answers ranges and watches from a script; records what the resolver asked."""

    endpoint = "http://e1"

    def __init__(self, ranges, watches) -> None:
        self.ranges = list(ranges)
        self.watches = list(watches)
        self.range_calls = 0
        self.watch_starts: list[int] = []
        self.failed_endpoints: list[str] = []

    def range_prefix(self, prefix):
        self.range_calls += 1
        return self.ranges.pop(0)

    def watch(self, prefix, *, start_revision, idle_timeout):
        self.watch_starts.append(start_revision)
        step = self.watches.pop(0) if self.watches else BlockingStream()
        if isinstance(step, EtcdError):
            raise step
        return step

    def failed(self, endpoint):
        self.failed_endpoints.append(endpoint)

    def close(self):
        pass


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def urls(resolver) -> list[str]:
    return [e.url for e in resolver.endpoints("users")]


def test_watch_resumes_after_the_listed_revision_and_pushes_each_change():
    client = ScriptedClient(
        ranges=[([kv("a", 1, 3)], 5)],
        watches=[BlockingStream([{"events": [{"kv": kv("b", 2, 6)}]}])],
    )
    resolver = EtcdResolver("etcd+http://e1:1", client=client)
    try:
        assert resolver.wait_synced(5)
        wait_for(lambda: urls(resolver) == ["http://h:1", "http://h:2"])
        assert client.watch_starts == [6]
        seen: list[list[str]] = []
        resolver.subscribe("users", lambda eps: seen.append([e.url for e in eps]))
        assert seen == [["http://h:1", "http://h:2"]]  # at once, on subscription
        assert resolver.revision == 6
    finally:
        resolver.close()


def test_a_broken_stream_fails_over_and_resumes_without_listing_again():
    broken = EtcdError("member gone", endpoint="http://e1")
    client = ScriptedClient(
        ranges=[([kv("a", 1, 3)], 5)],
        watches=[FailingStream([{"events": [{"kv": kv("b", 2, 6)}]}], broken),
                 EtcdError("no leader", endpoint="http://e2", code=14),
                 BlockingStream([{"events": [{"type": "DELETE", "kv": kv("a", 1, 7)}]}])],
    )
    resolver = EtcdResolver("etcd+http://e1:1,e2:1", client=client, backoff_base=0.001)
    try:
        wait_for(lambda: urls(resolver) == ["http://h:2"])
        assert client.watch_starts == [6, 7, 7]  # resumed after the last event seen
        assert client.failed_endpoints == ["http://e1", "http://e2"]
        assert client.range_calls == 1
    finally:
        resolver.close()


def test_a_compacted_revision_makes_it_list_again():
    compacted = EtcdCompactedError("compacted", endpoint="http://e1", compact_revision=40)
    client = ScriptedClient(
        ranges=[([kv("a", 1, 3)], 5), ([kv("c", 3, 41)], 50)],
        watches=[compacted],
    )
    resolver = EtcdResolver("etcd+http://e1:1", client=client)
    pushed: list[list[str]] = []
    resolver.subscribe("users", lambda eps: pushed.append([e.url for e in eps]))
    try:
        wait_for(lambda: urls(resolver) == ["http://h:3"])
        wait_for(lambda: len(client.watch_starts) == 2)
        assert client.watch_starts == [6, 51]
        assert pushed[-1] == ["http://h:3"]
    finally:
        resolver.close()


def test_a_failing_listener_does_not_stop_the_others():
    subscribed = threading.Event()
    stream = BlockingStream([{"events": [{"kv": kv("a", 1, 2)}]}], gate=subscribed)
    client = ScriptedClient(ranges=[([], 1)], watches=[stream])
    resolver = EtcdResolver("etcd+http://e1:1", client=client)
    got: list[list[str]] = []

    def broken(endpoints):
        if endpoints:
            raise RuntimeError("listener bug")

    resolver.subscribe("users", broken)
    resolver.subscribe("users", lambda eps: got.append([e.url for e in eps]))
    subscribed.set()
    try:
        wait_for(lambda: got and got[-1] == ["http://h:1"])
    finally:
        resolver.close()


def test_etcd_setting_selects_the_etcd_resolver():
    resolver = resolver_from_config("etcd+http://127.0.0.1:1/fleet")
    try:
        assert isinstance(resolver, EtcdResolver)
        assert resolver.config.prefix == "/fleet/services/"
        assert resolver.endpoints("users") == ()  # nothing reachable: empty, never blocking
    finally:
        resolver.close()


def test_etcd_unreachable_at_start_delays_only_the_first_subscription():
    resolver = EtcdResolver("etcd+http://127.0.0.1:1", initial_wait=0.2, timeout=0.1)
    got: list[tuple] = []
    try:
        started = time.monotonic()
        resolver.subscribe("users", got.append)
        first = time.monotonic() - started
        started = time.monotonic()
        resolver.subscribe("orders", got.append)
        second = time.monotonic() - started
        assert got == [(), ()]
        assert 0.15 < first < 2
        assert second < 0.1
    finally:
        resolver.close()
