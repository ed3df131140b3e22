"""Per-service supervision: desired replicas, scaling, rolling updates (surge 1, unavailable 0)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import aiohttp

from shoal._errors import ShoalError
from shoal._logging import get_logger
from shoal.platform._registry import InstanceRecord, Registry
from shoal.platform._replica import Launch, LineSink, ReplicaRunner
from shoal.platform.spec import Service

log = get_logger("shoal.platform")


class RolloutError(ShoalError):
    """A new replica did not become ready; the old ones were left serving."""


class ServiceSupervisor:
    """Keeps ``desired`` replicas of one service running."""

    def __init__(
        self,
        name: str,
        spec: Service,
        launch: Callable[[Service], Launch],
        registry: Registry,
        http: aiohttp.ClientSession,
        *,
        allocate_port: Callable[[], int],
        on_line: LineSink | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self._launch = launch
        self.registry = registry
        self.http = http
        self._allocate_port = allocate_port
        self._on_line = on_line
        self.runners: list[ReplicaRunner] = []
        self.version = 1
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self.desired = spec.replicas

    @property
    def busy(self) -> bool:
        """Whether a scale, rollout or stop is under way (the autoscaler waits its turn)."""
        return self._lock.locked()

    def _new_runner(self) -> ReplicaRunner:
        record = InstanceRecord(id=f"{self.name}-{next(self._ids)}", service=self.name,
                                port=self._allocate_port(), version=self.version)
        runner = ReplicaRunner(record, self.spec, self._launch(self.spec), self.registry,
                               self.http, on_line=self._on_line)
        self.runners.append(runner)
        runner.start()
        return runner

    async def start(self) -> list[ReplicaRunner]:
        await self.registry.set_desired(self.name, self.desired)
        return [self._new_runner() for _ in range(self.desired)]

    async def wait_ready(
        self, runners: list[ReplicaRunner], seconds: float
    ) -> ReplicaRunner | None:
        """Wait until each runner is ready; return the first that failed instead (or None)."""

        async def one(runner: ReplicaRunner) -> ReplicaRunner | None:
            ready = asyncio.ensure_future(runner.ready_event.wait())
            failed = asyncio.ensure_future(runner.failed_event.wait())
            done, pending = await asyncio.wait({ready, failed}, timeout=seconds,
                                               return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if ready in done and runner.ready_event.is_set():
                return None
            if runner.failure is None:
                runner.failure = f"not ready within {seconds:g}s"
            return runner

        results = await asyncio.gather(*(one(r) for r in runners))
        return next((r for r in results if r is not None), None)

    async def scale(self, replicas: int) -> None:
        """Start or stop replicas until ``replicas`` run; the newest stop first."""
        async with self._lock:
            self.desired = replicas
            await self.registry.set_desired(self.name, replicas)
            while len(self.runners) < replicas:
                self._new_runner()
            surplus = self.runners[replicas:]
            self.runners = self.runners[:replicas]
            await asyncio.gather(*(r.stop() for r in reversed(surplus)))
            log.info("service.scaled", service=self.name, replicas=replicas)

    def kill(self, instance: str | None = None) -> tuple[str, int] | None:
        """SIGKILL one replica (``instance``, else the first one running); it restarts like
        any crash. Returns ``(instance id, pid)``, or None when no such replica runs."""
        for runner in self.runners:
            if instance is not None and runner.record.id != instance:
                continue
            pid = runner.kill()
            if pid is not None:
                return runner.record.id, pid
        return None

    async def rollout(self, spec: Service | None = None) -> None:
        """Replace every replica, one at a time: start a new one, wait until it is ready
        (registered), then deregister, drain and stop an old one. Capacity never drops below
        the desired count. Raises :class:`RolloutError` if a new replica fails to become ready
        (the old replicas keep serving)."""
        async with self._lock:
            if spec is not None:
                self.spec = spec
            self.version += 1
            old = list(self.runners)
            log.info("rollout.started", service=self.name, version=self.version,
                     replicas=len(old))
            for previous in old:
                fresh = self._new_runner()
                failed = await self.wait_ready([fresh], self.spec.probes.startup_timeout)
                if failed is not None:
                    self.runners.remove(fresh)
                    await fresh.stop()
                    raise RolloutError(f"{self.name}: new replica {fresh.record.id} "
                                       f"{failed.failure}; rollout stopped")
                self.runners.remove(previous)
                await previous.stop()
            log.info("rollout.finished", service=self.name, version=self.version)

    async def stop(self) -> None:
        async with self._lock:
            runners, self.runners = self.runners, []
            await asyncio.gather(*(r.stop() for r in runners))
