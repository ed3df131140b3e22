"""The per-upstream policy stack shared by the sync and async clients (no I/O of its own).

An :class:`Upstream` bundles, for one called service, the instance table fed by discovery, the
balancer, outlier detection, the breaker and the bulkhead, plus pre-labelled metric children
(so a request never looks anything up in the registry). The client shells drive one
:class:`Call` through it::

    call = Call(...); upstream.begin_call(call)
    loop: request = upstream.prepare_attempt(call)      # breaker, balancer, deadline, headers
          response = <transport I/O>
          delay = upstream.after_response(call, response)  /  upstream.after_error(call, exc)
          None → done; else sleep(delay) and loop
    finally: upstream.end_call(call, outcome)

Discovery's threads never touch the policy state: their listener
(:meth:`Upstream.offer_endpoints`) only stores the latest endpoint list, and the client
applies it in its own context (:meth:`Upstream.apply_offered`: the async client on its
event loop, the sync client under its lock), at the latest when the next attempt chooses
its instance.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import Counter

from shoal._context import DEADLINE_MS, outgoing_headers
from shoal._errors import (
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    DeadlineExceededError,
    NoHealthyInstanceError,
    RequestBodyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResetError,
    UpstreamStatusError,
    UpstreamTimeoutError,
    UpstreamTransportError,
    caused,
)
from shoal._logging import get_logger
from shoal._metrics import (
    CLIENT_BREAKER_STATE,
    CLIENT_BREAKER_TRANSITIONS,
    CLIENT_CALL_DURATION,
    CLIENT_CALLS,
    CLIENT_EJECTED_INSTANCES,
    CLIENT_EJECTIONS,
    CLIENT_FALLBACKS,
    CLIENT_IN_FLIGHT,
    CLIENT_RETRIES,
    CLIENT_RETRY_BUDGET_EXHAUSTED,
)
from shoal.client._balancer import (
    BalancerName,
    Clock,
    Instance,
    InstanceTable,
    make_balancer,
)
from shoal.client._breaker import (
    STATE_GAUGE,
    BreakerPolicy,
    BreakerTransition,
    CircuitBreaker,
)
from shoal.client._bulkhead import Bulkhead, BulkheadPolicy
from shoal.client._outlier import EjectionEvent, OutlierDetector, OutlierPolicy
from shoal.client._retry import (
    IDEMPOTENCY_KEY,
    IDEMPOTENT_METHODS,
    RetryBudget,
    RetryBudgetPolicy,
    RetryPolicy,
    is_idempotent,
    parse_retry_after,
)
from shoal.client._transport import Request, Response, StreamingResponse, Timeouts
from shoal.discovery import Endpoint

_log = get_logger("shoal.client")

OUTCOMES = (
    "success",
    "client_error",
    "server_error",
    "connect_error",
    "timeout",
    "deadline_exceeded",
    "circuit_open",
    "bulkhead_full",
    "no_instance",
    "cancelled",
)
_OUTCOME_OF: dict[type[BaseException], str] = {
    UpstreamStatusError: "server_error",
    UpstreamConnectError: "connect_error",
    UpstreamResetError: "connect_error",
    UpstreamTransportError: "connect_error",  # (a custom transport's own)
    UpstreamTimeoutError: "timeout",
    DeadlineExceededError: "deadline_exceeded",
    CircuitOpenError: "circuit_open",
    BulkheadFullError: "bulkhead_full",
    NoHealthyInstanceError: "no_instance",
}


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of a call that raised ``exc``."""
    return _OUTCOME_OF.get(type(exc), "cancelled")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fallback:
    """A call site's degradation: when the call raises one of ``on``, answer with
    ``handler(error)`` instead; the response's ``degraded`` names the error."""

    on: tuple[type[UpstreamError], ...]
    handler: Callable[[UpstreamError], Response]

    def __post_init__(self) -> None:
        if not self.on:
            raise ConfigurationError("fallback.on", "name the errors the fallback replaces")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """Everything a client is configured with, validated once at construction."""

    service: str
    balancer: BalancerName
    retry: RetryPolicy
    retry_budget: RetryBudgetPolicy
    breaker: BreakerPolicy
    outlier: OutlierPolicy
    bulkhead: BulkheadPolicy
    timeouts: Timeouts

    def __post_init__(self) -> None:
        if not self.service:
            raise ConfigurationError("service", "name the calling service (metric label)")
        if self.balancer not in ("least_outstanding", "round_robin"):
            raise ConfigurationError(
                "balancer",
                f"must be 'least_outstanding' or 'round_robin', got {self.balancer!r}",
            )


def split_url(url: str) -> tuple[str, str]:
    """``http://users/users/42?x=1`` → ``("users", "/users/42?x=1")``."""
    if url.startswith("http://"):
        rest = url[7:]
    elif url.startswith("https://"):
        rest = url[8:]
    else:
        raise ConfigurationError("url", f"expected http://<service>/<path>, got {url!r}")
    slash = rest.find("/")
    service, path = (rest, "/") if slash == -1 else (rest[:slash], rest[slash:])
    if not service or ":" in service:
        raise ConfigurationError(
            "url", f"expected a logical service name without port, got {url!r}"
        )
    return service, path


class Call:
    """Mutable state of one logical call across its attempts."""

    __slots__ = (
        "attempt",
        "body",
        "deadline",
        "deadline_bound",
        "headers",
        "idempotent",
        "instance",
        "last_error",
        "method",
        "path",
        "permit",
        "sent_at",
        "started",
        "stream",
        "tried",
    )

    def __init__(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        deadline: float | None,
        deadline_bound: bool,
        started: float,
    ) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        #: A streamed request body: consumed by the first attempt, so never retried.
        self.stream: AsyncIterable[bytes] | None = None
        #: Absolute ``time.monotonic()`` deadline: the request's, or the client's total.
        self.deadline = deadline
        #: Whether ``deadline`` comes from the incoming request (→ DeadlineExceededError).
        self.deadline_bound = deadline_bound
        self.started = started
        # (The header scan only for methods that are not idempotent by themselves.)
        self.idempotent = method in IDEMPOTENT_METHODS or is_idempotent(
            method,
            headers is not None
            and any(key.lower() == IDEMPOTENCY_KEY for key in headers),
        )
        self.attempt = 0
        self.tried: tuple[Instance, ...] = ()
        self.last_error: UpstreamError | None = None
        self.instance: Instance | None = None
        self.permit = -1
        self.sent_at = 0.0


class Upstream:
    """The policy stack for one upstream service of one client."""

    def __init__(
        self,
        name: str,
        settings: ClientSettings,
        *,
        budget: RetryBudget,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.name = name
        self._settings = settings
        self._retry = settings.retry
        self._budget = budget
        self._clock = clock
        self._jitter = rng.random
        self.table = InstanceTable()
        self.balancer = make_balancer(settings.balancer, self.table, clock=clock, rng=rng)
        self.outlier = OutlierDetector(self.table, settings.outlier, clock=clock)
        self.breaker = CircuitBreaker(
            settings.breaker, clock=clock, upstream=name, on_transition=self._on_transition
        )
        self.bulkhead = Bulkhead(settings.bulkhead)
        caller = settings.service
        self._calls = {o: CLIENT_CALLS.labels(caller, name, o) for o in OUTCOMES}
        self._duration = CLIENT_CALL_DURATION.labels(caller, name)
        # Read at scrape time: no per-call cost.
        CLIENT_IN_FLIGHT.labels(caller, name).set_function(self._bulkhead_in_flight)
        self._budget_exhausted = CLIENT_RETRY_BUDGET_EXHAUSTED.labels(caller, name)
        self._state_gauge = CLIENT_BREAKER_STATE.labels(caller, name)
        self._state_gauge.set(0)
        self._ejections = CLIENT_EJECTIONS.labels(caller, name)
        self._ejected = CLIENT_EJECTED_INSTANCES.labels(caller, name)
        self._retries: dict[str, Counter] = {}
        #: The latest endpoint list discovery offered (stored from any thread) and the one
        #: applied to ``table`` (in the client's own context); compared by identity.
        self._offered: tuple[Endpoint, ...] = ()
        self._applied: tuple[Endpoint, ...] = ()

    def _bulkhead_in_flight(self) -> float:
        return self.bulkhead.in_flight

    # -- discovery ---------------------------------------------------------------------------

    def offer_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Discovery's listener, from any thread: keep ``endpoints`` as the latest list (one
        reference stored: no lock, never blocks). Nothing changes until the client applies
        it (:meth:`apply_offered`)."""
        self._offered = tuple(endpoints)

    def apply_offered(self) -> None:
        """Apply the latest offered list unless it is applied already. Only in the client's
        own context: on its event loop (async), under its lock (sync)."""
        offered = self._offered
        if offered is not self._applied:
            self._applied = offered
            self.set_endpoints(offered)

    def set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Replace the instance table now (instances that remain keep state). Only in the
        client's own context, as :meth:`apply_offered`."""
        self.table.update(endpoint.url for endpoint in endpoints)
        for event in self.outlier.enforce_limit():
            self._on_ejection(event)
        self._ejected.set(self.table.ejected_count(self._clock()))

    # -- one call ----------------------------------------------------------------------------

    def begin_call(self) -> None:
        """Admit a call through the bulkhead (else :class:`BulkheadFullError`)."""
        if not self.bulkhead.try_acquire():
            self._calls["bulkhead_full"].inc()
            raise BulkheadFullError(
                f"{self.bulkhead.limit} calls to {self.name} already in flight",
                service=self.name,
                limit=self.bulkhead.limit,
            )
        self._budget.deposit()

    def end_call(self, call: Call, outcome: str) -> None:
        """Account for a call admitted by :meth:`begin_call` (exactly once)."""
        if call.instance is not None:  # cancelled mid-attempt
            self.abort_attempt(call)
        self.bulkhead.release()
        self._calls[outcome].inc()
        self._duration.observe(time.monotonic() - call.started)

    def prepare_attempt(self, call: Call) -> Request:
        """Choose the next attempt's instance and build its request.

        Raises :class:`DeadlineExceededError` (deadline spent), :class:`CircuitOpenError`
        (breaker rejects a first attempt; a rejected retry re-raises the last error) or
        :class:`NoHealthyInstanceError`.
        """
        if self._offered is not self._applied:  # a discovery update not applied yet
            self.apply_offered()
        now = time.monotonic()
        left = None
        if call.deadline is not None:
            left = call.deadline - now
            if left <= 0:
                raise self._deadline_error(call)
        permit = self.breaker.try_acquire()
        if permit is None:
            if call.last_error is not None:
                raise call.last_error
            retry_after = self.breaker.retry_after()
            raise CircuitOpenError(
                f"circuit of {self.name} is open; next probe in {retry_after:.2f}s",
                service=self.name,
                retry_after=retry_after,
            )
        inst = self.balancer.pick(call.tried)
        if inst is None:
            self.breaker.release(permit)
            raise NoHealthyInstanceError(
                f"no healthy instance of {self.name}",
                service=self.name,
                attempts=call.attempt,
            )
        call.attempt += 1
        call.instance = inst
        call.permit = permit
        inst.outstanding += 1
        headers = outgoing_headers(now=now)
        if left is not None:
            headers[DEADLINE_MS] = str(max(0, int(left * 1000)))
        if call.headers:
            headers.update(call.headers)
        call.sent_at = now
        return Request(
            call.method,
            inst.url + call.path,
            headers=headers,
            body=call.body,
            timeout=left,
            service=self.name,
            instance=inst.url,
            stream=call.stream,
        )

    def abort_attempt(self, call: Call) -> None:
        """The attempt ended without an outcome (cancelled): free its permit and slot."""
        inst = call.instance
        if inst is not None:
            call.instance = None
            inst.outstanding -= 1
            self.breaker.release(call.permit)

    def _finish_attempt(self, call: Call, failure: bool) -> Instance:
        inst = call.instance
        assert inst is not None
        call.instance = None
        inst.outstanding -= 1
        duration = time.monotonic() - call.sent_at
        inst.observe_latency(duration, self._clock())
        self.breaker.record(call.permit, failure=failure, duration=duration)
        event = self.outlier.record_failure(inst) if failure else self.outlier.record_success(inst)
        if event is not None:
            self._on_ejection(event)
        if call.tried:
            call.tried = (*call.tried, inst)
        else:
            call.tried = (inst,)
        return inst

    def after_response(
        self, call: Call, response: Response | StreamingResponse
    ) -> float | None:
        """Account for an answer. Returns ``None`` when the call is done (the response is the
        result, or :class:`UpstreamStatusError` is raised for a final 5xx), else the delay
        before the retry."""
        status = response.status
        self._finish_attempt(call, status >= 500)
        response.attempts = call.attempt
        if status in self._retry.retry_on_status and call.idempotent:
            retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
            error = _status_error(self.name, response, call.attempt)
            delay = self._retry_delay(call, error, f"status_{status}", retry_after)
            if delay is not None:
                return delay
        if status >= 500:
            raise _status_error(self.name, response, call.attempt)
        return None

    def after_error(self, call: Call, exc: UpstreamError) -> float:
        """Account for a transport error; return the delay before the retry or raise the
        error to give up (a timeout caused by the request's deadline becomes
        :class:`DeadlineExceededError`)."""
        exc.attempts = call.attempt
        if isinstance(exc, RequestBodyError):
            # The caller's body failed (it left, or sent a bad one): not the instance's fault.
            self.abort_attempt(call)
            raise exc
        if isinstance(exc, UpstreamTimeoutError):
            if call.deadline is not None and time.monotonic() >= call.deadline - 0.001:
                # The caller's budget ran out, not the instance: no penalty.
                self.abort_attempt(call)
                raise caused(self._deadline_error(call), exc) from exc
            self._finish_attempt(call, True)
            raise exc
        self._finish_attempt(call, True)
        # Only a failed connect proves the service never saw the request; after a reset (or
        # any other transport failure) it may have acted on it: retry idempotent calls only.
        retryable = call.idempotent or isinstance(exc, UpstreamConnectError)
        reason = "reset" if isinstance(exc, UpstreamResetError) else "connect_error"
        delay = self._retry_delay(call, exc, reason, None) if retryable else None
        if delay is None:
            raise exc
        return delay

    def _retry_delay(
        self, call: Call, error: UpstreamError, reason: str, retry_after: float | None
    ) -> float | None:
        policy = self._retry
        if call.attempt >= policy.max_attempts or call.stream is not None:
            return None
        if retry_after is not None and retry_after > policy.max_retry_after:
            return None
        delay = policy.backoff(call.attempt, self._jitter())
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        if call.deadline is not None and time.monotonic() + delay >= call.deadline:
            return None
        if not self._budget.try_withdraw():
            self._budget_exhausted.inc()
            return None
        counter = self._retries.get(reason)
        if counter is None:
            counter = self._retries[reason] = CLIENT_RETRIES.labels(
                self._settings.service, self.name, reason
            )
        counter.inc()
        call.last_error = error
        return delay

    def _deadline_error(self, call: Call) -> UpstreamError:
        if not call.deadline_bound:
            return UpstreamTimeoutError(
                f"call to {self.name} exceeded the client's total timeout",
                service=self.name,
                attempts=call.attempt,
            )
        return DeadlineExceededError(
            f"deadline exceeded calling {self.name} after {call.attempt} attempt(s)",
            service=self.name,
            instance=call.tried[-1].url if call.tried else None,
            attempts=call.attempt,
        )

    def degrade(self, fallback: Fallback, exc: UpstreamError) -> Response:
        """Answer with the call site's fallback; count and mark it degraded."""
        response = fallback.handler(exc)
        response.degraded = type(exc).__name__
        response.attempts = exc.attempts
        CLIENT_FALLBACKS.labels(self._settings.service, self.name, response.degraded).inc()
        return response

    # -- events ------------------------------------------------------------------------------

    def _on_transition(self, event: BreakerTransition) -> None:
        caller = self._settings.service
        self._state_gauge.set(STATE_GAUGE[event.to_state])
        CLIENT_BREAKER_TRANSITIONS.labels(
            caller, self.name, event.from_state.value, event.to_state.value
        ).inc()
        _log.warning(
            "client.breaker_transition",
            upstream=self.name,
            from_state=event.from_state.value,
            to_state=event.to_state.value,
            failure_rate=round(event.failure_rate, 1),
            slow_call_rate=round(event.slow_call_rate, 1),
            calls=event.calls,
        )

    def _on_ejection(self, event: EjectionEvent) -> None:
        if event.ejected:
            self._ejections.inc()
        self._ejected.set(self.table.ejected_count(self._clock()))
        _log.warning(
            "client.instance_ejected" if event.ejected else "client.instance_returned",
            upstream=self.name,
            instance=event.instance,
            duration=event.duration,
            ejections=event.ejections,
        )


def _status_error(
    service: str, response: Response | StreamingResponse, attempts: int
) -> UpstreamStatusError:
    # A streamed answer reaches here with its body unread (the streaming shell reads error
    # bodies first and hands a Response over).
    content = response.content if isinstance(response, Response) else b""
    return UpstreamStatusError(
        f"{service} answered {response.status} after {attempts} attempt(s)",
        service=service,
        status=response.status,
        headers=response.headers,
        body=content,
        instance=response.instance,
        attempts=attempts,
    )

