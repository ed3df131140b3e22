"""The control plane ``shoal up`` runs: supervisor, registry and HTTP API for one fleet."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from shoal._chaos import CHAOS_TOKEN_ENV
from shoal._errors import ShoalError
from shoal._logging import JsonFormatter, get_logger, set_identity
from shoal.discovery._local import TOKEN_SETTING as DISCOVERY_TOKEN_ENV
from shoal.platform._api import build_api
from shoal.platform._autoscaling import Autoscaling, interval_from_env
from shoal.platform._environ import inherited
from shoal.platform._faults import FaultBoard
from shoal.platform._logstore import LogStore
from shoal.platform._observe import EventLog, start_observing, stop_observing
from shoal.platform._registry import READY, Registry
from shoal.platform._replica import Launch, LineSink, serve_argv
from shoal.platform._scraper import Scraper
from shoal.platform._state import PlatformError, StateDir
from shoal.platform._supervisor import RolloutError, ServiceSupervisor
from shoal.platform.spec import GATEWAY_SERVICE, Service, Spec, SpecError, load_spec

log = get_logger("shoal.platform")
EventSink = Callable[[str, dict[str, Any]], None]


class PortInUse(PlatformError):
    """A port the spec fixes is taken (``shoal up`` exits 2: the spec or the machine must
    change, retrying will not help)."""


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(spec: Spec, control_port: int | None = None) -> None:
    """Raise :class:`PortInUse` naming the first fixed port of ``spec`` (``control.port``,
    service ``SHOAL_SHARED_PORT``s, ``gateway.port``) that cannot be listened on now."""
    ports = [(f, h, p) for f, h, p in spec.listeners() if f != "control.port"]
    own = spec.control.port if control_port is None else control_port
    for field, host, port in [("control.port", spec.control.host, own), *ports]:
        if port and not port_free(host, port):
            what = {"control.port": "the control plane",
                    "gateway.port": "the gateway"}.get(field, field.split(".")[1])
            raise PortInUse(f"port {port} on {host} is already in use, so {what} cannot "
                            f"listen there: stop what uses it, or set {field} in the spec")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fleet_services(spec: Spec) -> dict[str, Service]:
    """The spec's services plus the gateway (a service like the others) when it has one."""
    services = dict(spec.services)
    if spec.gateway is not None:
        services[GATEWAY_SERVICE] = Service(
            app="shoal.platform.gateway:app",
            interface="asgi",
            replicas=spec.gateway.replicas,
            depends_on=sorted({r.service for r in spec.gateway.routes}),
        )
    return services


def start_waves(services: dict[str, Service]) -> list[list[str]]:
    remaining = {name: set(svc.depends_on) for name, svc in services.items()}
    waves: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        wave = sorted(n for n, deps in remaining.items() if deps <= done)
        waves.append(wave)
        done.update(wave)
        for n in wave:
            del remaining[n]
    return waves


class ControlPlane:
    """Runs a fleet from ``spec`` until :meth:`request_shutdown` (or SIGTERM/SIGINT)."""

    def __init__(
        self,
        spec: Spec,
        spec_path: Path,
        state_dir: Path,
        *,
        port: int | None = None,
        on_event: EventSink | None = None,
        on_line: LineSink | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.spec = spec
        self.spec_path = spec_path.resolve()
        self.state = StateDir(state_dir.resolve())
        self.host = spec.control.host
        self.port = spec.control.port if port is None else port
        self.on_event = on_event or (lambda kind, data: None)
        self.on_line = on_line
        self.cwd = (cwd or Path.cwd()).resolve()
        self.registry = Registry()
        self.scraper = Scraper(self.registry)
        self.events = EventLog()
        self.on_event = self.events.tee(self.on_event)
        self.logstore: LogStore | None = None
        self.faults = FaultBoard()
        self.autoscaling = Autoscaling(fleet_services(spec), interval=interval_from_env())
        self.supervisors: dict[str, ServiceSupervisor] = {}
        self.token = ""
        # Read-only credentials for replicas, each good for one GET (see _api.py): reading the
        # registry (local discovery) and reading the fault board. Never written to disk.
        self.discovery_token = secrets.token_urlsafe(32)
        self.chaos_token = secrets.token_urlsafe(32)
        self.phase = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        self._shutdown = asyncio.Event()
        self._used_ports: set[int] = set()

    # -- configuration of replicas -----------------------------------------------------------

    def _allocate_port(self) -> int:
        while True:
            port = free_port()
            if port not in self._used_ports:
                self._used_ports.add(port)
                return port

    @property
    def discovery(self) -> str:
        """What replicas discover through: this registry, or the shared etcd of the spec.

        With ``control.registry: etcd+http://...`` every replica registers itself in etcd
        (readiness-gated, leased, removed first thing in its drain) and watches it, so fleets
        on several hosts sharing that etcd see one another's services.
        """
        registry = self.spec.control.registry
        return registry if registry.startswith("etcd+") else f"local+http://{self.host}:{self.port}"

    def _launch_for(self, name: str) -> Callable[[Service], Launch]:
        def launch(service: Service) -> Launch:
            # Least privilege: the allow-list of this environment, never all of it (the
            # admin token, SHOAL_JWT_SECRET, a cloud key exported in the shell stay here).
            passthrough = list(service.env_passthrough)
            if name == GATEWAY_SERVICE:
                passthrough += self._gateway_secrets()
            env = inherited(os.environ, passthrough)
            env.update({
                "SHOAL_SERVICE": name,
                "SHOAL_HOST": "127.0.0.1",
                "SHOAL_DISCOVERY": self.discovery,
                "SHOAL_DRAIN_GRACE": str(service.drain_grace),
                "PYTHONUNBUFFERED": "1",
            })
            if self.discovery.startswith("local+"):
                env[DISCOVERY_TOKEN_ENV] = self.discovery_token
            if self.spec.control.chaos:
                env["SHOAL_CHAOS"] = "1"
                env["SHOAL_CONTROL_URL"] = f"http://{self.host}:{self.port}"
                env[CHAOS_TOKEN_ENV] = self.chaos_token
            if name == GATEWAY_SERVICE:
                env["SHOAL_GATEWAY_SPEC"] = str(self.spec_path)
                assert self.spec.gateway is not None
                env["SHOAL_SHARED_PORT"] = str(self.spec.gateway.port)
                env["SHOAL_SHARED_HOST"] = self.spec.gateway.host
            env.update(service.env)
            return Launch(argv=serve_argv(service), env=env, cwd=str(self.cwd))

        return launch

    def _gateway_secrets(self) -> list[str]:
        """The variables the gateway's routes name as their HS256 secret (``auth.secret_env``):
        the only secrets of this environment the gateway inherits."""
        gateway = self.spec.gateway
        if gateway is None:
            return []
        return sorted({route.auth.secret_env for route in gateway.routes
                       if route.auth is not None and route.auth.secret_env})

    # -- views ---------------------------------------------------------------------------

    def service_view(self, name: str) -> dict[str, Any]:
        now = time.time()
        sup = self.supervisors.get(name)
        return {
            "service": name,
            "desired": self.registry.desired(name),
            "version": sup.version if sup else 0,
            "endpoints": self.registry.endpoints(name),
            "instances": [r.as_dict(now) for r in self.registry.instances(name)],
            "autoscale": self.autoscaling.view(name),
        }

    def status(self) -> dict[str, Any]:
        return {
            "system": self.spec.system,
            "phase": self.phase,
            "error": self.error,
            "control": {"url": f"http://{self.host}:{self.port}", "pid": os.getpid(),
                        "spec": str(self.spec_path), "state_dir": str(self.state.path),
                        "started_at": round(self.started_at, 3)},
            "gateway": (f"http://{self.spec.gateway.host}:{self.spec.gateway.port}"
                        if self.spec.gateway else None),
            "services": [self.service_view(n) for n in self.supervisors],
        }

    # -- operations ----------------------------------------------------------------------

    async def scale(self, name: str, replicas: int) -> None:
        await self.supervisors[name].scale(replicas)
        self.on_event("scaled", {"service": name, "replicas": replicas})

    async def rollout(self, name: str, *, reload_spec: bool) -> str | None:
        spec = None
        if reload_spec and name != GATEWAY_SERVICE:
            try:
                fresh = load_spec(self.spec_path)
            except SpecError as exc:
                return f"the spec cannot be re-read: {exc}"
            spec = fleet_services(fresh).get(name)
        try:
            await self.supervisors[name].rollout(spec)
        except RolloutError as exc:
            return str(exc)
        self.on_event("rolled_out", {"service": name})
        return None

    def request_shutdown(self) -> None:
        self._shutdown.set()

    # -- run -----------------------------------------------------------------------------

    def _preflight(self) -> None:
        check_ports(self.spec, self.port)

    async def run(self) -> int:
        """Start the fleet, serve until shutdown, stop everything. Returns an exit code."""
        lock = self.state.lock()
        try:
            self._preflight()
            self.token = self.state.new_token()
            return await self._run()
        finally:
            self.state.clear_control()
            lock.close()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        observing = start_observing(self)
        persisting = loop.create_task(self._persist_instances(), name="persist-instances")
        runner = web.AppRunner(build_api(self), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.state.write_control({"pid": os.getpid(), "host": self.host, "port": self.port,
                                  "spec": str(self.spec_path), "system": self.spec.system,
                                  "started_at": self.started_at})
        self.on_event("control_started", {"url": f"http://{self.host}:{self.port}"})
        code = 0
        autoscaler: asyncio.Task[None] | None = None
        async with aiohttp.ClientSession() as http:
            try:
                code = await self._start_fleet(http)
                if code == 0:
                    self.phase = "running"
                    self.on_event("running", self.status())
                    autoscaler = loop.create_task(
                        self.autoscaling.run(self.scraper, self.supervisors, self.scale),
                        name="autoscaler")
                    await self._shutdown.wait()
            finally:
                self.phase = "stopping"
                self.on_event("stopping", {})
                if autoscaler is not None:
                    autoscaler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await autoscaler
                await self._stop_fleet()
                persisting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await persisting
                await stop_observing(self, observing)
                await runner.cleanup()
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
                self.on_event("stopped", {})
        return code

    async def _persist_instances(self) -> None:
        """Keep ``.shoal/instances.json`` (pids, ports) in step with the registry."""
        index = 0
        while True:
            index = await self.registry.wait(index, 30.0)
            self.state.write_instances([
                {"id": r.id, "service": r.service, "pid": r.pid, "port": r.port,
                 "state": r.state} for r in self.registry.instances()])

    async def _start_fleet(self, http: aiohttp.ClientSession) -> int:
        services = fleet_services(self.spec)
        for name, service in services.items():
            self.supervisors[name] = ServiceSupervisor(
                name, service, self._launch_for(name), self.registry, http,
                allocate_port=self._allocate_port, on_line=self.on_line)
        for wave in start_waves(services):
            started = {name: await self.supervisors[name].start() for name in wave}
            for name in wave:
                self.on_event("starting", {"service": name, "replicas": len(started[name])})
            waits = [self.supervisors[n].wait_ready(started[n], services[n].probes.startup_timeout)
                     for n in wave]
            shutdown = asyncio.ensure_future(self._shutdown.wait())
            gathered = asyncio.ensure_future(asyncio.gather(*waits))
            await asyncio.wait([shutdown, gathered],  # type: ignore[type-var]
                               return_when=asyncio.FIRST_COMPLETED)
            if not gathered.done():
                gathered.cancel()
                return 130
            shutdown.cancel()
            failed = next((r for r in gathered.result() if r is not None), None)
            if failed is not None:
                self.phase = "failed"
                self.error = f"replica {failed.record.id} {failed.failure}"
                self.on_event("failed", {"instance": failed.record.id, "reason": failed.failure,
                                         "last_lines": list(failed.lines)[-15:]})
                return 1
            for name in wave:
                self.on_event("ready", {"service": name,
                                        "endpoints": self.registry.endpoints(name)})
        return 0

    async def _stop_fleet(self) -> None:
        # Stop in reverse start order: the gateway first, the dependencies last.
        services = fleet_services(self.spec)
        for wave in reversed(start_waves(services)):
            await asyncio.gather(*(self.supervisors[n].stop() for n in wave
                                   if n in self.supervisors))


def ready_count(view: dict[str, Any]) -> int:
    return sum(1 for i in view["instances"] if i["state"] == READY)


def _log_to(path: Path) -> None:
    """The control plane's own JSON log lines go to ``path`` (the console stays readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    set_identity(service="shoal-control", instance=f"control-{os.getpid()}")


def run_foreground(spec_path: Path, state_dir: Path, *, on_event: EventSink | None = None,
                   port: int | None = None) -> int:
    """Load the spec and run the control plane in this process until it is stopped."""
    spec = load_spec(spec_path)
    _log_to(state_dir / "control.log")
    cp = ControlPlane(spec, spec_path, state_dir, port=port, on_event=on_event)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(cp.run())
    return 130


def _print_failure(kind: str, data: dict[str, Any]) -> None:
    # Detached: stdout is .shoal/control.out, which `shoal up --detach` shows on failure.
    if kind == "failed":
        print(f"{data['instance']} {data['reason']}; its last lines:", flush=True)
        for line in data["last_lines"]:
            print(f"  | {line}", flush=True)


if __name__ == "__main__":  # pragma: no cover - `shoal up --detach` runs this
    try:
        sys.exit(run_foreground(Path(sys.argv[1]), Path(sys.argv[2]), on_event=_print_failure))
    except ShoalError as exc:
        print(f"error: {exc}", flush=True)
        # 2 as `shoal up` exits for a spec it refuses or a port that is taken.
        sys.exit(2 if isinstance(exc, SpecError | PortInUse) else 1)
