"""Serve an ASGI or WSGI app the documented way, with Kubernetes-style graceful drain.

ASGI apps run on uvicorn (uvloop + httptools); WSGI apps on gunicorn with one threaded worker
(scale by replicas, not workers: one process per replica keeps metrics and drain exact).

On SIGTERM: ``/readyz`` answers 503 at once; the server keeps accepting and serving (so a
load balancer that has not yet noticed loses nothing) for ``SHOAL_DRAIN_DELAY`` seconds, then
until in-flight requests finish (at most ``SHOAL_DRAIN_GRACE`` seconds); then it stops and the
process exits 0. A second SIGINT/SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import socket
import sys
import time
from types import FrameType
from typing import Any, Literal

from shoal._chassis import Chassis, instances
from shoal._errors import ConfigurationError
from shoal._logging import batch_writes, configure_logging, get_logger
from shoal._registration import Registrar, bound_port, start_registration
from shoal._settings import Settings

Interface = Literal["auto", "asgi", "wsgi"]
_log = get_logger("shoal.serve")
_POLL = 0.01


def freeze_startup_heap() -> None:
    """Move everything alive once the server is up (modules, the app, its routes, pools)
    into the garbage collector's permanent generation, after one full collection.

    A full (generation 2) collection walks every tracked object; a service's startup heap
    is some 50,000 of them, so each full collection under load paused the gateway for
    10-15 ms and set its p99. Frozen objects are never walked again. The price: one of them
    that later becomes garbage in a reference cycle (a replaced table, say) is never freed,
    a small one-time leak. Before a fork (gunicorn's worker) fewer pages are copied, though
    reference counting still writes to them. See :func:`gc.freeze`."""
    gc.collect()
    gc.freeze()


def import_app(target: str) -> Any:
    """Import ``module:attribute`` (the current directory is importable)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError("app", f"expected 'module:attribute', got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError("app", f"cannot import module {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(
                "app", f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def detect_interface(app: Any) -> Literal["asgi", "wsgi"]:
    # Flask apps (and WSGI callables wrapping them) have ``wsgi_app``; ASGI apps are
    # coroutine callables (Starlette/FastAPI instances, or plain ``async def``).
    if hasattr(app, "wsgi_app"):
        return "wsgi"
    call = app if asyncio.iscoroutinefunction(app) else getattr(app, "__call__", None)  # noqa: B004
    return "asgi" if asyncio.iscoroutinefunction(call) else "wsgi"


def _drain_targets() -> list[Chassis]:
    return instances()


def wait_drained(settings: Settings, sleep: Any = time.sleep) -> None:
    """Block through the drain: the delay, then until nothing is in flight or grace is up."""
    targets = _drain_targets()
    for chassis in targets:
        chassis.begin_drain()
    if settings.drain_delay:
        sleep(settings.drain_delay)
    deadline = time.monotonic() + settings.drain_grace
    while time.monotonic() < deadline and not all(c.drained() for c in targets):
        sleep(_POLL)


def serve_asgi(app: Any, settings: Settings) -> None:
    import uvicorn  # noqa: PLC0415 - optional extra

    class DrainingServer(uvicorn.Server):
        """uvicorn, but SIGTERM drains first and the process then exits 0."""

        _drain_started = False
        _shoal_registrar: Registrar | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self._drain_started:
                self.force_exit = True
                self.should_exit = True
                return
            self._drain_started = True
            loop = self._shoal_loop
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain()))

        async def _drain(self) -> None:
            await asyncio.to_thread(wait_drained, settings)
            self.should_exit = True

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # Listening now (the real port is known even for PORT=0): join discovery, which
            # registers once /readyz passes and leaves first thing in the drain.
            listening = [s for server in self.servers for s in server.sockets]
            port = bound_port(listening, settings.port)
            self._shoal_registrar = start_registration(settings, port=port)
            batch_writes(asyncio.get_running_loop())  # access lines: one write per 20 ms
            freeze_startup_heap()  # (after the app's lifespan startup)

        async def serve(self, sockets: Any = None) -> None:
            self._shoal_loop = asyncio.get_running_loop()
            try:
                await super().serve(sockets)
            finally:
                batch_writes(None)
                if self._shoal_registrar is not None:
                    await asyncio.to_thread(self._shoal_registrar.close)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        lifespan="auto",
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(settings.drain_grace)),
        timeout_keep_alive=5,
        backlog=2048,
    )
    server = DrainingServer(config)
    if os.environ.get("SHOAL_SHARED_PORT"):
        server.run(sockets=listen_sockets(settings))
    else:
        server.run()


def listen_sockets(settings: Settings) -> list[socket.socket]:
    """The listening sockets of a served process: ``PORT`` on ``SHOAL_HOST``, and, when
    ``SHOAL_SHARED_PORT`` is set (the platform's gateway replicas), also that port, which the
    replicas share with ``SO_REUSEPORT`` so the kernel spreads connections among them, on
    ``SHOAL_SHARED_HOST`` (default: ``SHOAL_HOST``; the gateway's ``host`` in the spec).

    Raises :class:`~shoal.ConfigurationError` naming the setting when a port is taken."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        own = socket.create_server((settings.host, settings.port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigurationError(
            "PORT", f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    sockets = [own]
    shared = os.environ.get("SHOAL_SHARED_PORT")
    if shared:
        shared_host = os.environ.get("SHOAL_SHARED_HOST") or settings.host
        public = socket.socket(socket.AF_INET6 if ":" in shared_host else socket.AF_INET,
                               socket.SOCK_STREAM)
        public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        public.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            public.bind((shared_host, int(shared)))
            public.listen(2048)
        except (OSError, ValueError) as exc:
            own.close()
            public.close()
            raise ConfigurationError(
                "SHOAL_SHARED_PORT", f"cannot listen on {shared_host}:{shared}: {exc}") from None
        sockets.append(public)
    return sockets


def serve_wsgi(app: Any, settings: Settings, threads: int) -> None:
    from gunicorn.app.base import BaseApplication  # noqa: PLC0415 - optional extra

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            opts = {
                "bind": f"{settings.host}:{settings.port}",
                "workers": 1,
                "threads": threads,
                "worker_class": "shoal._gunicorn.DrainingThreadWorker",
                "graceful_timeout": str(int(settings.drain_delay + settings.drain_grace) + 2),
                "timeout": 30,
                "keepalive": 5,
                "accesslog": None,
                "errorlog": "-",
                "logger_class": "shoal._gunicorn.JsonGunicornLogger",
                "backlog": 2048,
            }
            for key, value in opts.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    freeze_startup_heap()  # (in the arbiter: the worker it forks inherits the frozen heap)
    _App().run()


def serve(
    target: str | Any,
    *,
    interface: Interface = "auto",
    threads: int = 8,
    settings: Settings | None = None,
) -> None:
    """Serve ``target`` (an app or ``module:attribute``) until SIGTERM/SIGINT, then drain.

    Raises :class:`~shoal.ConfigurationError` for an app that does not import or a bad setting.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = import_app(target) if isinstance(target, str) else target
    own_server = getattr(app, "shoal_serve", None)
    if callable(own_server):
        # An app with its own server (the gateway): it listens, drains and registers itself.
        _log.info("server.starting", interface="own", host=settings.host, port=settings.port)
        own_server(settings)
        return
    kind = detect_interface(app) if interface == "auto" else interface
    _log.info("server.starting", interface=kind, host=settings.host, port=settings.port)
    if kind == "asgi":
        serve_asgi(app, settings)
    else:
        serve_wsgi(app, settings, threads)

