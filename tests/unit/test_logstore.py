"""The SQLite log store: parsing, ordering, filters, follow cursor, retention."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.platform._logstore import LogStore, parse_line, parse_since, query_file


def jline(event: str, *, level: str = "info", trace: str | None = None, ts: float | None = None,
          **fields: object) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts or time.time()))
    ms = int(((ts or time.time()) % 1) * 1000)
    return json.dumps({"ts": f"{stamp}.{ms:03d}Z", "level": level, "service": "x",
                       "instance": "x-1", "trace_id": trace, "span_id": None,
                       "request_id": None, "event": event, **fields})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore(tmp_path / "logs.db", flush_interval=0.01)
    yield s
    s.close()


def test_json_lines_keep_level_trace_and_fields_and_other_lines_become_messages() -> None:
    row = parse_line(1.0, "orders", "orders-1",
                     jline("order.created", level="warning", trace="t1", order_id=7))
    assert row[3:7] == ("warning", 30, "t1", "order.created order_id=7")
    plain = parse_line(5.0, "orders", "orders-1", "Traceback (most recent call last):")
    assert plain == (5.0, "orders", "orders-1", "info", 20, None,
                     "Traceback (most recent call last):", "Traceback (most recent call last):")
    assert parse_line(5.0, "s", "i", "{not json")[6] == "{not json"


def test_entries_come_back_in_time_order_across_services(store: LogStore) -> None:
    now = time.time()
    store.add("users", "users-1", jline("second", ts=now - 1))
    store.add("orders", "orders-1", jline("first", ts=now - 2))
    store.add("users", "users-2", jline("third", ts=now))
    assert store.flush()
    page = store.query()
    assert [e.message for e in page.entries] == ["first", "second", "third"]
    assert [e.service for e in page.entries] == ["orders", "users", "users"]
    assert page.cursor == 3


def test_filters_service_instance_level_trace_since_and_grep(store: LogStore) -> None:
    now = time.time()
    store.add("gateway", "gateway-1", jline("proxy", trace="abc", ts=now - 1))
    store.add("orders", "orders-1", jline("order.created", trace="abc", ts=now - 0.5))
    store.add("orders", "orders-2", jline("db slow", level="warning", ts=now - 0.2))
    store.add("users", "users-1", jline("boom", level="error", trace="def", ts=now))
    store.add("users", "users-1", jline("old", ts=now - 3600))
    assert store.flush()

    def messages(**f: object) -> list[str]:
        return [e.message for e in store.query(**f).entries]

    assert messages(trace_id="abc") == ["proxy", "order.created"]
    assert messages(service="orders") == ["order.created", "db slow"]
    assert messages(instance="orders-2") == ["db slow"]
    assert messages(level="warning") == ["db slow", "boom"]
    assert messages(since=parse_since("5m", now)) == ["proxy", "order.created", "db slow",
                                                      "boom"]
    assert messages(until=now - 0.4) == ["old", "proxy", "order.created"]
    assert messages(since=now - 1.5, until=now - 0.1) == ["proxy", "order.created", "db slow"]
    assert messages(grep="slow") == ["db slow"]
    assert messages(grep="ord*") == ["order.created"]
    assert messages(service="users", level="error", trace_id="def") == ["boom"]
    assert messages(limit=2) == ["db slow", "boom"]  # the newest two, oldest first
    with pytest.raises(ValueError, match="unknown level"):
        store.query(level="loud")


def test_follow_cursor_returns_only_lines_stored_after_it(store: LogStore) -> None:
    store.add("users", "users-1", "one")
    assert store.flush()
    cursor = store.query().cursor
    assert store.query(after=cursor).entries == []
    store.add("users", "users-1", "two")
    store.add("orders", "orders-1", "three")
    assert store.flush()
    page = store.query(after=cursor, service="orders")
    assert [e.message for e in page.entries] == ["three"]
    assert store.query(after=page.cursor).entries == []
    first = store.query(after=0, limit=2)
    assert [e.message for e in first.entries] == ["one", "two"]
    assert [e.message for e in store.query(after=first.cursor).entries] == ["three"]


def test_retention_drops_lines_older_than_max_age(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db", max_age=60)
    try:
        store.add("users", "users-1", jline("ancient", ts=time.time() - 120))
        store.add("users", "users-1", jline("recent"))
        assert store.flush()
        store.enforce_retention()
        assert [e.message for e in store.query().entries] == ["recent"]
    finally:
        store.close()


def test_retention_by_size_drops_the_oldest_lines_first(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db", max_bytes=400_000, retention_interval=3600)
    try:
        for i in range(6000):
            store.add("users", "users-1", jline(f"line{i}", payload="x" * 100))
        assert store.flush()
        db = sqlite3.connect(tmp_path / "logs.db")
        assert LogStore.size_bytes(db) > 400_000
        store.enforce_retention()
        assert LogStore.size_bytes(db) <= 400_000
        db.close()
        kept = store.query(after=0, limit=10_000).entries
        assert 0 < len(kept) < 6000
        assert kept[-1].message.startswith("line5999")
        assert [e.id for e in kept] == sorted(e.id for e in kept)
        assert kept[0].id > 1  # the oldest went first
        assert store.query(grep="line0").entries == []  # the FTS index followed the deletes
    finally:
        store.close()


def test_a_closed_store_is_readable_from_the_file(tmp_path: Path) -> None:
    store = LogStore(tmp_path / "logs.db")
    store.add("users", "users-1", "last words")
    store.close()
    page = query_file(tmp_path / "logs.db")
    assert [e.message for e in page.entries] == ["last words"]
    assert query_file(tmp_path / "missing.db").entries == []


def test_parse_since_accepts_durations_and_iso_times() -> None:
    assert parse_since("5m", now=1000.0) == 700.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("90", now=100.0) == 10.0
    assert parse_since("1970-01-01T00:01:00+00:00") == 60.0
    with pytest.raises(ValueError):
        parse_since("yesterday")
    # Out of range is a ValueError too (the API answers 400 for it, never 500).
    for text in ("0001-01-01", "9" * 30, "\x00"):
        with pytest.raises(ValueError):
            parse_since(text)
