"""The framework-agnostic core every adapter wraps: identity, readiness checks, drain state,
in-flight accounting and the per-route metric children.

Adapters (ASGI middleware, the Flask adapter) call :meth:`Chassis.request_started` and
:meth:`Chassis.request_finished` around each request; the server runner calls
:meth:`Chassis.begin_drain` on SIGTERM and waits for :meth:`Chassis.drained`.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from shoal import _metrics
from shoal._errors import ConfigurationError
from shoal._logging import configure_logging, get_logger, log_access, set_identity
from shoal._settings import Settings

#: A readiness check: returns ``True``/``None`` when healthy; ``False`` or an exception when not.
ReadinessCheck = Callable[[], "bool | Awaitable[bool | None] | None"]

LIVEZ = "/livez"
READYZ = "/readyz"
METRICS = "/metrics"
PROBE_PATHS = frozenset({LIVEZ, READYZ, METRICS})
#: Methods counted under their own name; any other is counted as ``OTHER`` (bounded labels).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "<unmatched>"

_log = get_logger("shoal.chassis")
_JSON = b"application/json"
_METRICS_TYPE = _metrics.CONTENT_TYPE.encode()
_instances: list[Chassis] = []


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    duration_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "ok" if self.ok else "fail",
            "duration_ms": round(self.duration_ms, 3),
        }
        if self.error:
            out["error"] = self.error
        return out


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Chassis:
    """Per-service state shared by the framework adapters and the server runner."""

    def __init__(self, service: str | None = None, *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        name = service or self.settings.service
        if not name:
            raise ConfigurationError(
                "SHOAL_SERVICE", "no service name: pass service=... to instrument() or set it"
            )
        self.service = name
        self.instance = self.settings.instance
        self._checks: dict[str, ReadinessCheck] = {}
        self._draining = False
        self._drain_hooks: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self.in_flight = 0
        if _metrics.MULTIPROCESS:
            self._in_flight_gauge: Any = _metrics.HTTP_IN_FLIGHT.labels(name)
        else:
            # Read at scrape time from the counts the chassis keeps anyway, instead of two
            # locked gauge updates per request. Summed over chassis of the same service, as
            # the shared labelled child was.
            _metrics.HTTP_IN_FLIGHT.labels(name).set_function(
                lambda: float(sum(c.in_flight for c in _instances if c.service == name)))
            self._in_flight_gauge = None
        self._ready_gauge = _metrics.READINESS.labels(name)
        self._ready_gauge.set(1)
        # (method, route, status) -> (counter child, histogram child): labels() takes a lock
        # and builds a tuple each call; caching keeps the per-request cost to two increments.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        set_identity(service=name, instance=self.instance)
        configure_logging(self.settings.log_level)
        _instances.append(self)

    # -- readiness ---------------------------------------------------------------------------

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """Register ``check`` under ``name``; ``/readyz`` fails (503) while any check fails.

        A check returns ``True`` (or ``None``) when healthy; ``False`` or raising means not
        ready. Sync checks may block (they run in a worker thread under ASGI); each check is
        bounded by ``SHOAL_READINESS_TIMEOUT``.
        """
        if not name or name in self._checks:
            raise ConfigurationError("check name", f"must be unique and non-empty: {name!r}")
        self._checks[name] = check

    @property
    def has_async_checks(self) -> bool:
        return any(inspect.iscoroutinefunction(c) for c in self._checks.values())

    @property
    def draining(self) -> bool:
        return self._draining

    def readiness_body(self, results: list[CheckResult]) -> tuple[int, dict[str, Any]]:
        ok = not self._draining and all(r.ok for r in results)
        self._ready_gauge.set(1 if ok else 0)
        status = "draining" if self._draining else ("ready" if ok else "not ready")
        body = {
            "status": status,
            "service": self.service,
            "instance": self.instance,
            "checks": {r.name: r.as_dict() for r in results},
        }
        return (200 if ok else 503), body

    def run_checks_sync(self) -> list[CheckResult]:
        """Run every check in this thread (WSGI adapter); async checks are run to completion."""
        results = []
        for name, check in self._checks.items():
            start = time.perf_counter()
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = asyncio.run(_awaited(value, self.settings.readiness_timeout))
                ok, error = value is not False, None if value is not False else "returned False"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                ok, error = False, _error_text(exc)
            results.append(CheckResult(name, ok, (time.perf_counter() - start) * 1000, error))
        return results

    async def run_checks_async(self) -> list[CheckResult]:
        """Run every check concurrently, sync ones in worker threads, each with its timeout."""
        timeout = self.settings.readiness_timeout

        async def one(name: str, check: ReadinessCheck) -> CheckResult:
            start = time.perf_counter()
            try:
                if inspect.iscoroutinefunction(check):
                    value = await asyncio.wait_for(check(), timeout)
                else:
                    value = await asyncio.wait_for(asyncio.to_thread(check), timeout)
                    if inspect.isawaitable(value):
                        value = await asyncio.wait_for(value, timeout)
                ok = value is not False
                error = None if ok else "returned False"
            except TimeoutError:
                ok, error = False, f"timed out after {timeout:g}s"
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
                ok, error = False, _error_text(exc)
            return CheckResult(name, ok, (time.perf_counter() - start) * 1000, error)

        return list(await asyncio.gather(*(one(n, c) for n, c in self._checks.items())))

    async def probe(self, path: str) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """The answer to ``GET`` of a probe path (:data:`PROBE_PATHS`): status, body,
        content type and extra headers; readiness checks run concurrently."""
        ready = path == READYZ and not self._draining
        return self.probe_answer(path, await self.run_checks_async() if ready else [])

    def probe_answer(
        self, path: str, results: list[CheckResult]
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """:meth:`probe`'s answer given the readiness ``results`` (used for ``/readyz``
        only; a threaded server runs them with :meth:`run_checks_sync`)."""
        if path == LIVEZ:
            body = orjson.dumps({"status": "ok", "service": self.service,
                                 "instance": self.instance})
            return 200, body, _JSON, []
        if path == READYZ:
            status, payload = self.readiness_body(results)
            return status, orjson.dumps(payload), _JSON, [(b"cache-control", b"no-store")]
        return 200, _metrics.render(), _METRICS_TYPE, []

    # -- drain -------------------------------------------------------------------------------

    def on_drain(self, hook: Callable[[], object]) -> None:
        """Call ``hook()`` first thing when the drain starts (e.g. leave the registry).

        Hooks run in registration order on the thread that starts the drain, before the drain
        delay; they should be bounded (seconds at most). An exception is logged, not raised.
        """
        self._drain_hooks.append(hook)

    def begin_drain(self) -> None:
        """Fail readiness from now on and run the :meth:`on_drain` hooks; in-flight and new
        requests are still served."""
        if not self._draining:
            self._draining = True
            for hook in self._drain_hooks:
                try:
                    hook()
                except Exception:  # noqa: BLE001 - one failing hook must not stop the drain
                    _log.exception("drain.hook_failed", hook=getattr(hook, "__qualname__", "?"))
            self._ready_gauge.set(0)
            _log.info("drain.started", in_flight=self.in_flight,
                      grace_s=self.settings.drain_grace)

    def drained(self) -> bool:
        return self._draining and self.in_flight == 0

    # -- per-request accounting --------------------------------------------------------------

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1
        if self._in_flight_gauge is not None:
            self._in_flight_gauge.inc()

    def request_finished(self, method: str, route: str, status: int, duration: float) -> None:
        with self._lock:
            self.in_flight -= 1
        if self._in_flight_gauge is not None:
            self._in_flight_gauge.dec()
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                _metrics.HTTP_REQUESTS.labels(self.service, method, route, str(status)),
                _metrics.HTTP_DURATION.labels(self.service, method, route, f"{status // 100}xx"),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(duration)

    def finish_request(self, method: str, path: str, route: str, status: int,
                       duration: float) -> None:
        """:meth:`request_finished` (``method`` outside the known ones counted as ``OTHER``)
        and the request's JSON access line: what every adapter does as a request ends."""
        self.request_finished(method if method in KNOWN_METHODS else "OTHER", route, status,
                              duration)
        log_access(method, path, route, status, duration)

    def exception_raised(self, route: str, exc: BaseException) -> None:
        _metrics.HTTP_EXCEPTIONS.labels(self.service, route, type(exc).__name__).inc()


async def _awaited(value: Awaitable[bool | None], seconds: float) -> bool | None:
    async with asyncio.timeout(seconds):
        return await value


def instances() -> list[Chassis]:
    """Every chassis created in this process (the server runner drains them all)."""
    return list(_instances)
