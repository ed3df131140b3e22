"""The sync client (Flask services): the policy stack over a :class:`SyncTransport`."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from shoal._errors import UpstreamError
from shoal.client._balancer import BalancerName, Clock
from shoal.client._breaker import BreakerPolicy
from shoal.client._bulkhead import BulkheadPolicy
from shoal.client._outlier import OutlierPolicy
from shoal.client._retry import RetryBudgetPolicy, RetryPolicy
from shoal.client._shell import ClientBase
from shoal.client._transport import Response, SyncTransport, Timeouts
from shoal.client._upstream import Call, Fallback, Upstream, outcome_of
from shoal.discovery import Endpoint, EndpointListener, Resolver


class Client(ClientBase):
    """Calls other services by logical name: ``client.get("http://users/users/42")``.

    Every call is balanced over the service's live instances (from ``resolver``, default
    ``$SHOAL_DISCOVERY``), carries the trace context, request id and remaining deadline,
    is bounded by the incoming request's deadline and ``timeouts``, passes the service's
    bulkhead and circuit breaker, and is retried under ``retry`` and the client's retry budget.
    Use one client per process (``with Client(...) as client``, or :meth:`close`).

    Discovery updates arrive on the resolver's threads and are applied under the client's
    lock: at once when it is free, else by the next attempt (a listener never waits for the
    lock: a resolver may hold its own lock while it delivers).
    """

    def __init__(
        self,
        *,
        service: str,
        resolver: Resolver | None = None,
        balancer: BalancerName = "least_outstanding",
        retry: RetryPolicy | None = None,
        retry_budget: RetryBudgetPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        outlier: OutlierPolicy | None = None,
        bulkhead: BulkheadPolicy | None = None,
        timeouts: Timeouts | None = None,
        transport: SyncTransport | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``service`` names the calling service (metric label). Policies default to their
        documented defaults. Raises :class:`ConfigurationError` naming a bad setting."""
        super().__init__(
            service=service,
            resolver=resolver,
            balancer=balancer,
            retry=retry,
            retry_budget=retry_budget,
            breaker=breaker,
            outlier=outlier,
            bulkhead=bulkhead,
            timeouts=timeouts,
            clock=clock,
            rng=rng,
        )
        if transport is None:
            from shoal.client._urllib3 import Urllib3Transport  # noqa: PLC0415 - optional extra

            transport = Urllib3Transport(timeouts=self.settings.timeouts)
        self._transport = transport
        self._sleep = time.sleep  # tests swap it to observe backoff
        # Re-entrant: the first table is delivered inside ``upstream()``, under the lock.
        self._lock = threading.RLock()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """Send ``method url`` (``http://<service>/<path>``) and return the response.

        Returns responses with status < 500 (4xx included: check ``response.status`` or call
        ``raise_for_status``). ``timeout`` overrides ``timeouts.total`` for this call.
        Raises an :class:`UpstreamError` subclass - :class:`UpstreamStatusError` for a final
        5xx, :class:`CircuitOpenError`, :class:`BulkheadFullError`,
        :class:`DeadlineExceededError`, :class:`NoHealthyInstanceError`,
        :class:`UpstreamConnectError` or :class:`UpstreamResetError` (both
        :class:`UpstreamTransportError`), :class:`UpstreamTimeoutError` - unless ``fallback``
        covers it, in which case its response is returned with ``degraded`` set.
        """
        with self._lock:
            upstream, call = self._new_call(
                method, url, headers=headers, content=content, json=json, timeout=timeout
            )
        try:
            return self._send(upstream, call)
        except UpstreamError as exc:
            if fallback is not None and isinstance(exc, fallback.on):
                with self._lock:
                    return upstream.degrade(fallback, exc)
            raise

    def _send(self, upstream: Upstream, call: Call) -> Response:
        # The policy cores are not thread-safe; their (short) updates run under one lock,
        # the I/O and the backoff outside it.
        lock = self._lock
        with lock:
            upstream.begin_call()
        outcome = "cancelled"
        try:
            while True:
                with lock:
                    request = upstream.prepare_attempt(call)
                delay: float | None
                try:
                    response = self._transport.handle_request(request)
                except UpstreamError as exc:
                    with lock:
                        delay = upstream.after_error(call, exc)
                else:
                    with lock:
                        delay = upstream.after_response(call, response)
                    if delay is None:
                        outcome = "success" if response.status < 400 else "client_error"
                        return response
                self._sleep(delay)
        except UpstreamError as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            with lock:
                upstream.end_call(call, outcome)

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("GET", url, ...)``."""
        return self.request("GET", url, headers=headers, timeout=timeout, fallback=fallback)

    def delete(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("DELETE", url, ...)``."""
        return self.request(
            "DELETE", url, headers=headers, timeout=timeout, fallback=fallback
        )

    def post(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("POST", url, ...)``: retried only with an ``Idempotency-Key`` header."""
        return self.request(
            "POST", url, headers=headers, content=content, json=json, timeout=timeout,
            fallback=fallback,
        )

    def put(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("PUT", url, ...)``."""
        return self.request(
            "PUT", url, headers=headers, content=content, json=json, timeout=timeout,
            fallback=fallback,
        )

    def upstream(self, service: str) -> Upstream:
        """The policy stack of ``service`` (created and subscribed on first use)."""
        with self._lock:
            return super().upstream(service)

    def _listener(self, upstream: Upstream) -> EndpointListener:
        return _LockedDelivery(self._lock, upstream)

    def close(self) -> None:
        """Stop following discovery and close pooled connections (idempotent)."""
        self._unsubscribe()
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _LockedDelivery:
    """Discovery's listener for one upstream of a sync client, called on the resolver's
    threads: stores the list (:meth:`Upstream.offer_endpoints`) and applies it under the
    client's lock if that is free now; if a call holds it, the next attempt applies it
    (:meth:`Upstream.prepare_attempt`, under the lock). Never blocks: a resolver may hold
    its own lock while it delivers, and a call may be waiting for that one."""

    __slots__ = ("lock", "upstream")

    def __init__(self, lock: threading.RLock, upstream: Upstream) -> None:
        self.lock = lock
        self.upstream = upstream

    def __call__(self, endpoints: Sequence[Endpoint]) -> None:
        upstream = self.upstream
        upstream.offer_endpoints(endpoints)
        if self.lock.acquire(blocking=False):
            try:
                upstream.apply_offered()
            finally:
                self.lock.release()
