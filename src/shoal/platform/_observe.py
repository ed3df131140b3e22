"""The control plane's observers: log store, metrics scraper and the fleet's event list.

:func:`start_observing` runs before the fleet starts (so the first replica lines are stored)
and returns the tasks the control plane owns; :func:`stop_observing` runs after the fleet has
stopped (so a stopping or crashing replica's last lines are stored too), cancels them and
closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoal.platform._logstore import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, LogStore, parse_since
from shoal.platform._registry import CRASH_LOOP, CRASHED, FAILED, READY, UNREADY, Registry

if TYPE_CHECKING:
    from shoal.platform._registry import InstanceRecord
    from shoal.platform.controlplane import ControlPlane

LOG_FILE = "logs.db"
#: Registry states worth an event, and the event's kind.
_STATE_EVENTS = {READY: "instance_ready", UNREADY: "instance_unready",
                 CRASHED: "instance_crashed", CRASH_LOOP: "instance_crash_loop",
                 FAILED: "instance_failed"}


class EventLog:
    """The last ``maxlen`` fleet events (scaled, rolled out, replica ready/crashed ...)."""

    def __init__(self, maxlen: int = 500) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._seq = itertools.count(1)

    def record(self, kind: str, data: dict[str, Any]) -> None:
        # "running" carries the whole status: the event itself is what matters.
        payload = {} if kind == "running" else data
        self._events.append({"seq": next(self._seq), "ts": round(time.time(), 3),
                             "kind": kind, **{k: v for k, v in payload.items()
                                              if k not in {"seq", "ts", "kind"}}})

    def tee(self, sink: Callable[[str, dict[str, Any]], None]
            ) -> Callable[[str, dict[str, Any]], None]:
        """An event sink that records, then passes the event on to ``sink``."""

        def both(kind: str, data: dict[str, Any]) -> None:
            self.record(kind, data)
            sink(kind, data)

        return both

    def after(self, seq: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        """Events with a sequence number above ``seq``, oldest first (the newest ``limit``)."""
        return [e for e in self._events if e["seq"] > seq][-limit:]


async def watch_instances(registry: Registry, sink: Callable[[str, dict[str, Any]], None]
                          ) -> None:
    """Turn registry state changes into events until cancelled."""
    seen: dict[str, str] = {}
    index = 0
    while True:
        index = await registry.wait(index, 30.0)
        for record in registry.instances():
            previous = seen.get(record.id)
            seen[record.id] = record.state
            kind = _STATE_EVENTS.get(record.state)
            if previous != record.state and kind is not None:
                sink(kind, _instance_data(record))
        live = {r.id for r in registry.instances()}
        for gone in [i for i in seen if i not in live]:
            del seen[gone]


def _instance_data(record: InstanceRecord) -> dict[str, Any]:
    return {"service": record.service, "instance": record.id, "restarts": record.restarts,
            "last_exit": record.last_exit}


def logstore_settings() -> dict[str, Any]:
    """Retention from ``SHOAL_LOGS_MAX_MB`` and ``SHOAL_LOGS_MAX_AGE`` (``7d``, ``12h``, s)."""
    settings: dict[str, Any] = {"max_bytes": DEFAULT_MAX_BYTES, "max_age": DEFAULT_MAX_AGE}
    if os.environ.get("SHOAL_LOGS_MAX_MB"):
        settings["max_bytes"] = int(float(os.environ["SHOAL_LOGS_MAX_MB"]) * 1024 * 1024)
    if os.environ.get("SHOAL_LOGS_MAX_AGE"):
        settings["max_age"] = -parse_since(os.environ["SHOAL_LOGS_MAX_AGE"], now=0.0)
    return settings


def start_observing(cp: ControlPlane) -> list[asyncio.Task[None]]:
    """Open the log store (teeing replica lines into it) and start the scraper and watcher."""
    store = LogStore(cp.state.path / LOG_FILE, **logstore_settings())
    cp.logstore = store
    previous = cp.on_line

    def on_line(record: InstanceRecord, line: str) -> None:
        store.sink(record, line)
        if previous is not None:
            previous(record, line)

    cp.on_line = on_line
    loop = asyncio.get_running_loop()
    return [loop.create_task(cp.scraper.run(), name="scraper"),
            loop.create_task(watch_instances(cp.registry, cp.events.record),
                             name="event-watch")]


async def stop_observing(cp: ControlPlane, tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if cp.logstore is not None:
        await asyncio.to_thread(cp.logstore.close)
