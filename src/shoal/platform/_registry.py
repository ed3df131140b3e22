"""The control plane's service registry: instances, their state, and blocking-query watches.

Every change bumps a global ``index``; a watcher asks "anything after index N?" and is answered
as soon as something changes (or when its wait runs out), Consul-style. Only *ready* instances
are endpoints: readiness gates traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

#: Replica states, in the words ``shoal ps`` shows.
STARTING = "starting"
READY = "ready"
UNREADY = "unready"
DRAINING = "draining"
CRASHED = "crashed"
CRASH_LOOP = "crash-loop"
FAILED = "failed"
STOPPED = "stopped"


@dataclass
class InstanceRecord:
    """What the registry knows of one replica."""

    id: str
    service: str
    port: int
    state: str = STARTING
    pid: int | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.time)
    ready_since: float | None = None
    last_exit: int | None = None
    version: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "id": self.id,
            "service": self.service,
            "state": self.state,
            "ready": self.state == READY,
            "url": self.url,
            "port": self.port,
            "pid": self.pid,
            "restarts": self.restarts,
            "started_at": round(self.started_at, 3),
            "uptime_s": round(now - self.started_at, 1) if self.pid else 0.0,
            "ready_since": round(self.ready_since, 6) if self.ready_since else None,
            "last_exit": self.last_exit,
            "version": self.version,
        }


class Registry:
    """Instances by service, with an index that every change increases."""

    def __init__(self) -> None:
        self._instances: dict[str, InstanceRecord] = {}
        self._index = 1
        self._changed = asyncio.Condition()
        self._desired: dict[str, int] = {}

    @property
    def index(self) -> int:
        return self._index

    async def _bump(self) -> None:
        self._index += 1
        async with self._changed:
            self._changed.notify_all()

    async def upsert(self, record: InstanceRecord) -> None:
        self._instances[record.id] = record
        await self._bump()

    async def set_state(self, instance_id: str, state: str, **changes: Any) -> None:
        record = self._instances.get(instance_id)
        if record is None:
            return
        if record.state == state and not changes:
            return
        record.state = state
        if state == READY:
            record.ready_since = time.time()
        for key, value in changes.items():
            setattr(record, key, value)
        await self._bump()

    async def remove(self, instance_id: str) -> None:
        if self._instances.pop(instance_id, None) is not None:
            await self._bump()

    async def set_desired(self, service: str, replicas: int) -> None:
        self._desired[service] = replicas
        await self._bump()

    def instances(self, service: str | None = None) -> list[InstanceRecord]:
        return sorted(
            (r for r in self._instances.values() if service is None or r.service == service),
            key=lambda r: (r.service, _numeric_suffix(r.id)),
        )

    def endpoints(self, service: str) -> list[str]:
        """URLs of the ready instances of ``service``: what clients may call."""
        return [r.url for r in self.instances(service) if r.state == READY]

    def services(self) -> list[str]:
        return sorted(set(self._desired) | {r.service for r in self._instances.values()})

    def desired(self, service: str) -> int:
        return self._desired.get(service, 0)

    async def wait(self, after: int, seconds: float) -> int:
        """Return the index once it is greater than ``after``, or after ``seconds``."""
        if self._index > after:
            return self._index
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._changed.wait_for(lambda: self._index > after)
        return self._index


def _numeric_suffix(instance_id: str) -> int:
    tail = instance_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
