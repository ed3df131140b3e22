"""The fleet's central log store: every replica's output lines in one SQLite file.

The supervisor hands each line to :meth:`LogStore.sink`, which only timestamps it and puts it on
a queue (the event loop never waits for the disk). One writer thread drains the queue in
batches: it parses JSON lines (anything else becomes a message of level ``info``), inserts with
``executemany`` in one transaction per batch, and enforces retention by age and by size.

Schema: ``logs(id, ts, service, instance, level, level_no, trace_id, message, line)`` with
indexes on ``(ts)``, ``(service, ts)`` and ``(trace_id)``; ``logs_fts`` is an FTS5 index of
``message`` (external content, kept in step by triggers). WAL mode, so readers (``shoal logs``,
the dashboard) never block the writer. Readers open their own connection per query, so a store
can be read from any thread, or from another process while the fleet is down.
"""

from __future__ import annotations

import contextlib
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from shoal._logging import get_logger
from shoal.platform._registry import InstanceRecord

log = get_logger("shoal.platform")

LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50,
          "fatal": 50}
#: Fields every chassis line has; the others become ``key=value`` in the message.
_STANDARD = frozenset({"ts", "level", "service", "instance", "trace_id", "span_id",
                       "request_id", "event", "logger", "message", "msg"})
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_AGE = 7 * 24 * 3600.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs(
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    service TEXT NOT NULL,
    instance TEXT NOT NULL,
    level TEXT NOT NULL,
    level_no INTEGER NOT NULL,
    trace_id TEXT,
    message TEXT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_ts ON logs(ts);
CREATE INDEX IF NOT EXISTS logs_service_ts ON logs(service, ts);
CREATE INDEX IF NOT EXISTS logs_trace ON logs(trace_id) WHERE trace_id IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS logs_fts USING fts5(
    message, content='logs', content_rowid='id', tokenize='ascii', detail='none',
    columnsize=0);
CREATE TRIGGER IF NOT EXISTS logs_ai AFTER INSERT ON logs BEGIN
    INSERT INTO logs_fts(rowid, message) VALUES (new.id, new.message);
END;
CREATE TRIGGER IF NOT EXISTS logs_ad AFTER DELETE ON logs BEGIN
    INSERT INTO logs_fts(logs_fts, rowid, message) VALUES ('delete', old.id, old.message);
END;
"""
_INSERT = ("INSERT INTO logs(ts, service, instance, level, level_no, trace_id, message, line) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_Row = tuple[float, str, str, str, int, str | None, str, str]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One stored line."""

    id: int
    ts: float
    service: str
    instance: str
    level: str
    trace_id: str | None
    message: str
    line: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LogPage:
    """Entries of a query and the store's cursor (the highest id) when it ran: a follower
    asks for ``after=cursor`` next time."""

    entries: list[LogEntry]
    cursor: int


def parse_since(text: str, now: float | None = None) -> float:
    """``5m``/``30s``/``2h``/``1d`` ago, or an ISO-8601 time, as a Unix timestamp.

    Raises ValueError for anything else."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d{1,15}(?:\.\d{1,9})?)\s*(ms|s|m|h|d)?\s*", text)
    if match:
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
        return now - float(match.group(1)) * unit
    try:
        return datetime.fromisoformat(text).timestamp()
    except (OverflowError, OSError):
        raise ValueError(f"time out of range: {text!r}") from None


_second_cache: dict[str, float] = {}


def _iso_ts(value: Any, fallback: float) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return fallback
    # The chassis writes ``2026-01-02T03:04:05.678Z``: parse each second once.
    if len(value) == 24 and value[19] == "." and value[23] == "Z":
        second = _second_cache.get(value[:19])
        if second is None:
            with contextlib.suppress(ValueError):
                second = datetime.fromisoformat(value[:19] + "+00:00").timestamp()
                if len(_second_cache) > 4096:
                    _second_cache.clear()
                _second_cache[value[:19]] = second
        if second is not None and value[20:23].isdigit():
            return second + int(value[20:23]) / 1000
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(value).timestamp()
    return fallback


def parse_line(received: float, service: str, instance: str, line: str) -> _Row:
    """The row a replica's output line becomes (pure; JSON lines keep their fields)."""
    data: Any = None
    if line.startswith("{"):
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(line)
    if not isinstance(data, dict):
        return (received, service, instance, "info", 20, None, line, line)
    level = str(data.get("level") or "info").lower()
    event = data.get("event", data.get("message", data.get("msg", "")))
    parts = [event if isinstance(event, str) else orjson.dumps(event).decode()]
    for key, value in data.items():
        if key not in _STANDARD:
            if isinstance(value, str):
                shown = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                shown = repr(value)
            else:
                shown = orjson.dumps(value, default=str).decode()
            parts.append(f"{key}={shown}")
    trace_id = data.get("trace_id")
    return (_iso_ts(data.get("ts"), received), service, instance, level,
            LEVELS.get(level, 20), trace_id if isinstance(trace_id, str) else None,
            " ".join(parts), line)


def _fts_query(text: str) -> str:
    # The index keeps no positions (detail=none: a third of the write cost), so a phrase is
    # asked as every token as a prefix; ``instr`` on the message then confirms the text.
    tokens = re.findall(r"[A-Za-z0-9_\x80-\U0010ffff]+", text)
    if not tokens:
        raise ValueError(f"cannot search for {text!r}: it has no words")
    return " AND ".join('"' + t.replace('"', '""') + '"*' for t in tokens)


class LogStore:
    """An SQLite log store with a batching writer thread. Thread-safe; close it when done."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_age: float = DEFAULT_MAX_AGE,
        batch_size: int = 5000,
        flush_interval: float = 0.1,
        retention_interval: float = 5.0,
        max_pending: int = 500_000,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retention_interval = retention_interval
        self.max_pending = max_pending
        self.dropped = 0
        self.written = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        db.executescript(_SCHEMA)
        db.close()
        self._thread = threading.Thread(target=self._writer, name="shoal-logstore",
                                        daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-65536")
        return db

    # -- writing -----------------------------------------------------------------------------

    def sink(self, record: InstanceRecord, line: str) -> None:
        """The supervisor's :data:`LineSink`: never blocks (drops, counted, when far behind)."""
        self.add(record.service, record.id, line)

    def add(self, service: str, instance: str, line: str, received: float | None = None) -> None:
        if self._queue.qsize() >= self.max_pending:
            self.dropped += 1
            return
        self._queue.put((time.time() if received is None else received, service, instance,
                         line))

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every line added so far is committed (True) or ``timeout`` passes."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the writer."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _writer(self) -> None:
        db = self._connect()
        next_retention = 0.0
        try:
            while True:
                item = self._queue.get()
                rows: list[_Row] = []
                waiters: list[threading.Event] = []
                stop = False
                deadline = time.monotonic() + self.flush_interval
                while True:
                    if item is None:
                        stop = True
                    elif isinstance(item, threading.Event):
                        waiters.append(item)
                    else:
                        rows.append(parse_line(*item))
                    if stop or len(rows) >= self.batch_size:
                        break
                    try:
                        item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                if rows:
                    self._write(db, rows)
                if time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + self.retention_interval
                    self._enforce_retention(db)
                for waiter in waiters:
                    waiter.set()
                if stop:
                    return
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, rows: list[_Row]) -> None:
        try:
            with db:
                db.execute("BEGIN")
                db.executemany(_INSERT, rows)
            self.written += len(rows)
        except sqlite3.Error as exc:
            self.dropped += len(rows)
            log.exception("logstore.write_failed", error=str(exc), lines=len(rows))

    def enforce_retention(self) -> None:
        """Apply the age and size limits now (the writer does it every few seconds)."""
        db = self._connect()
        try:
            self._enforce_retention(db)
        finally:
            db.close()

    def _enforce_retention(self, db: sqlite3.Connection) -> None:
        try:
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM logs WHERE ts < ?", (time.time() - self.max_age,))
            for merged in (False, True):
                self._drop_oldest(db)
                if merged or self.size_bytes(db) <= self.max_bytes:
                    break
                # Deleting from the external-content FTS5 index adds delete markers until its
                # segments merge, so the index can stay over the limit however many rows go:
                # merge it (dropping deleted entries), then delete again if still needed.
                with db:
                    db.execute("INSERT INTO logs_fts(logs_fts) VALUES('optimize')")
        except sqlite3.Error as exc:
            log.exception("logstore.retention_failed", error=str(exc))

    def _drop_oldest(self, db: sqlite3.Connection) -> None:
        for _ in range(20):
            if self.size_bytes(db) <= self.max_bytes:
                return
            (count,) = db.execute("SELECT count(*) FROM logs").fetchone()
            if count == 0:
                return
            # Oldest first, a tenth at a time: freed pages are reused by new lines.
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM logs WHERE id <= (SELECT id FROM logs ORDER BY id "
                           "LIMIT 1 OFFSET ?)", (max(1, count // 10) - 1,))

    @staticmethod
    def size_bytes(db: sqlite3.Connection) -> int:
        """Bytes in use by the database (free pages excluded)."""
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    # -- reading -------------------------------------------------------------------------------

    def query(self, **filters: Any) -> LogPage:
        """See :func:`query_file`."""
        return query_file(self.path, **filters)


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        yield db
    finally:
        db.close()


def query_file(  # noqa: PLR0912 - one branch per optional filter
    path: Path,
    *,
    service: str | None = None,
    instance: str | None = None,
    level: str | None = None,
    trace_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
    grep: str | None = None,
    after: int | None = None,
    limit: int = 500,
) -> LogPage:
    """Lines matching every given filter, in time order (``since`` and ``until``, Unix
    times, include their bounds).

    ``level`` is a minimum (``warning`` includes errors). ``grep`` finds the text in the
    message, case-insensitively, where it starts at a word boundary (the FTS5 index finds
    candidates by word prefixes, a substring test confirms them). Without
    ``after`` the *newest* ``limit`` matches are returned; with it, the first ``limit`` lines
    stored after that cursor (what a follower asks). Raises ValueError for an unknown level.
    """
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("service", service), ("instance", instance),
                          ("trace_id", trace_id)):
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if level:
        if level.lower() not in LEVELS:
            raise ValueError(f"unknown level {level!r}: use one of debug, info, warning, "
                             "error, critical")
        where.append("level_no >= ?")
        args.append(LEVELS[level.lower()])
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if until is not None:
        where.append("ts <= ?")
        args.append(until)
    if grep:
        where.append("id IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?)")
        args.append(_fts_query(grep))
        where.append("instr(lower(message), ?) > 0")
        args.append(grep.rstrip("*").lower())
    if after is not None:
        where.append("id > ?")
        args.append(after)
    clause = ("WHERE " + " AND ".join(where)) if where else ""
    columns = "id, ts, service, instance, level, trace_id, message, line"
    if after is not None:
        sql = f"SELECT {columns} FROM logs {clause} ORDER BY id LIMIT ?"  # noqa: S608
    else:
        sql = (f"SELECT * FROM (SELECT {columns} FROM logs {clause} "  # noqa: S608
               "ORDER BY ts DESC, id DESC LIMIT ?) ORDER BY ts, id")
    args.append(limit)
    if not path.exists():
        return LogPage([], after or 0)
    with _reader(path) as db:
        db.execute("BEGIN")
        (cursor,) = db.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()
        try:
            rows = db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if grep and "fts5" in str(exc):
                raise ValueError(f"cannot search for {grep!r}: {exc}") from None
            raise
        db.execute("COMMIT")
    entries = [LogEntry(*row) for row in rows]
    if after is not None and entries and len(entries) == limit:
        cursor = entries[-1].id  # more to come: continue from the last one returned
    return LogPage(entries, int(cursor))
