"""One replica: an OS process in its own process group, probed, restarted, drained.

A :class:`ReplicaRunner` keeps one replica slot alive: it starts the process, probes readiness
(which gates registration) and liveness (which restarts), restarts crashes with exponential
backoff, and on :meth:`ReplicaRunner.stop` deregisters first, then SIGTERM (the service drains),
then SIGKILL of the whole group after the grace.

As in Kubernetes, every start of the process, the first or a restart, goes through the same
gate: it has ``startup_timeout`` seconds to pass its readiness probe (else it is killed and
restarted like a crash), and its liveness probe only starts once *this* process has passed that
gate, so a slow starter is never killed by liveness while it is still starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from shoal._logging import get_logger
from shoal.platform._backoff import RestartBackoff
from shoal.platform._registry import (
    CRASH_LOOP,
    CRASHED,
    DRAINING,
    FAILED,
    READY,
    STARTING,
    UNREADY,
    InstanceRecord,
    Registry,
)
from shoal.platform.spec import Service

log = get_logger("shoal.platform")
#: ``shoal serve`` exits 2 for a configuration error (an app that does not import, a bad
#: setting): restarting cannot help, so the replica fails instead of crash-looping.
CONFIG_ERROR_EXIT = 2
_PR_SET_PDEATHSIG = 1

LineSink = Callable[[InstanceRecord, str], None]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the control plane is killed outright, its replicas get SIGTERM instead of lingering.
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start the replica's process."""

    argv: list[str]
    env: Mapping[str, str]
    cwd: str


def serve_argv(service: Service) -> list[str]:
    if service.command is not None:
        return list(service.command)
    assert service.app is not None
    return [sys.executable, "-m", "shoal", "serve", service.app, "--interface", service.interface]


class ReplicaRunner:
    """Keeps one replica slot running until stopped."""

    def __init__(
        self,
        record: InstanceRecord,
        spec: Service,
        launch: Launch,
        registry: Registry,
        http: aiohttp.ClientSession,
        *,
        on_line: LineSink | None = None,
    ) -> None:
        self.record = record
        self.spec = spec
        self.launch = launch
        self.registry = registry
        self.http = http
        self.on_line = on_line
        self.lines: deque[str] = deque(maxlen=200)
        self.process: asyncio.subprocess.Process | None = None
        self.backoff = RestartBackoff()
        #: Whether some process of this replica was ready once (a later exit with code 2 is
        #: then a crash to restart, not a configuration error). Each process has its own
        #: startup gate: see :meth:`_monitor`.
        self.ever_ready = False
        self.ready_event = asyncio.Event()
        self.failed_event = asyncio.Event()
        self.failure: str | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"replica-{self.record.id}")

    async def _run(self) -> None:
        await self.registry.upsert(self.record)
        while not self._stopping:
            try:
                await self._spawn()
            except OSError as exc:
                await self._fail(f"cannot start: {exc}")
                return
            code = await self._monitor()
            if self._stopping:
                return
            self.record.restarts += 1
            if code == CONFIG_ERROR_EXIT and not self.ever_ready:
                await self._fail(f"exited with {code} (configuration error) before it was ready")
                return
            delay = self.backoff.delay(time.monotonic())
            state = CRASH_LOOP if self.backoff.crash_looping else CRASHED
            await self.registry.set_state(self.record.id, state, last_exit=code, pid=None)
            log.warning("replica.crashed", instance=self.record.id, exit_code=code,
                        restart_in_s=delay, state=state)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)

    async def _fail(self, reason: str) -> None:
        self.failure = reason
        await self.registry.set_state(self.record.id, FAILED, pid=None)
        log.error("replica.failed", instance=self.record.id, reason=reason,
                  last_lines=list(self.lines)[-10:])
        self.failed_event.set()

    async def _spawn(self) -> None:
        env = dict(self.launch.env)
        env["PORT"] = str(self.record.port)
        env["SHOAL_INSTANCE"] = self.record.id
        self.process = await asyncio.create_subprocess_exec(
            *self.launch.argv,
            env=env,
            cwd=self.launch.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            limit=1024 * 1024,
        )
        self.backoff.started(time.monotonic())
        self.record.started_at = time.time()
        await self.registry.set_state(self.record.id, STARTING, pid=self.process.pid)
        log.info("replica.started", instance=self.record.id, pid=self.process.pid,
                 port=self.record.port)

    async def _read_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            raw = await process.stdout.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if self.on_line is not None:
                self.on_line(self.record, line)

    async def _monitor(self) -> int:
        process = self.process
        assert process is not None
        reader = asyncio.create_task(self._read_output(process))
        started = asyncio.Event()  # this process passed its startup (readiness) gate
        probes = [asyncio.create_task(self._readiness_loop(started)),
                  asyncio.create_task(self._liveness_loop(started))]
        try:
            code = await process.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader, 2)
        finally:
            for task in [*probes, reader]:
                task.cancel()
            await asyncio.gather(*probes, reader, return_exceptions=True)
        self.record.last_exit = code
        return code

    async def _probe(self, path: str, seconds: float) -> bool:
        try:
            async with self.http.get(self.record.url + path,
                                     timeout=aiohttp.ClientTimeout(total=seconds)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _readiness_loop(self, started: asyncio.Event) -> None:
        probe = self.spec.probes.readiness
        startup_timeout = self.spec.probes.startup_timeout
        startup_deadline = time.monotonic() + startup_timeout
        ok_streak = fail_streak = 0
        while True:
            ok = await self._probe(probe.path, probe.timeout)
            ok_streak, fail_streak = (ok_streak + 1, 0) if ok else (0, fail_streak + 1)
            state = self.record.state
            if self._stopping:
                pass  # draining: never registered again, never killed for a slow start
            elif ok and ok_streak >= probe.success_threshold and state != READY:
                started.set()
                self.ever_ready = True
                await self.registry.set_state(self.record.id, READY)
                log.info("replica.ready", instance=self.record.id, url=self.record.url,
                         restarts=self.record.restarts)
                self.ready_event.set()
            elif not ok and fail_streak >= probe.failure_threshold and state == READY:
                await self.registry.set_state(self.record.id, UNREADY)
                log.warning("replica.unready", instance=self.record.id)
            if not (started.is_set() or self._stopping) and time.monotonic() > startup_deadline:
                # Every start has startup_timeout, not only the first: a restarted process
                # that hangs is killed and restarted (with backoff) like any crash.
                reason = (f"not ready within {startup_timeout:g}s "
                          f"(GET {probe.path} never answered 200)")
                log.error("replica.startup_timeout", instance=self.record.id,
                          restarts=self.record.restarts, last_lines=list(self.lines)[-10:])
                if not self.ever_ready:  # the first start: `shoal up` or a rollout waits on it
                    self.failure = reason
                    self.failed_event.set()
                self._kill_group()
                return
            # Until this process first succeeds, probe often: it joins as soon as it can serve.
            await asyncio.sleep(probe.period if started.is_set() else min(probe.period, 0.1))

    async def _liveness_loop(self, started: asyncio.Event) -> None:
        probe = self.spec.probes.liveness
        # Liveness watches a process that has started (passed its readiness gate), never one
        # still starting: that is startup_timeout's job (Kubernetes' startup probe).
        await started.wait()
        fails = 0
        while True:
            await asyncio.sleep(probe.period)
            if self.record.state == DRAINING:
                continue
            fails = 0 if await self._probe(probe.path, probe.timeout) else fails + 1
            if fails >= probe.failure_threshold:
                log.warning("replica.liveness_failed", instance=self.record.id, failures=fails)
                self._kill_group()
                return

    def _signal_group(self, sig: signal.Signals) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def _kill_group(self) -> None:
        self._signal_group(signal.SIGKILL)

    def kill(self) -> int | None:
        """SIGKILL the replica's process group (fault injection); the runner restarts it as
        it would any crash. Returns the killed pid, or None when nothing was running."""
        process = self.process
        if process is None or process.returncode is not None:
            return None
        self._kill_group()
        return process.pid

    async def stop(self, *, remove: bool = True) -> None:
        """Deregister, SIGTERM (drain), wait the grace, SIGKILL the group; then forget it."""
        self._stopping = True
        self._stop_requested.set()
        await self.registry.set_state(self.record.id, DRAINING)
        process = self.process
        if process is not None and process.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.spec.drain_grace + 5)
            except TimeoutError:
                log.warning("replica.kill", instance=self.record.id,
                            reason="did not stop within the drain grace")
        # Whatever is left in its process group (a gunicorn worker) goes too.
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, 5)
        if remove:
            await self.registry.remove(self.record.id)
        log.info("replica.stopped", instance=self.record.id,
                 exit_code=None if process is None else process.returncode)
