"""What the sync and async clients share: configuration, upstream creation, call setup."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import orjson

from shoal._context import current_deadline
from shoal.client._balancer import BalancerName, Clock
from shoal.client._breaker import BreakerPolicy
from shoal.client._bulkhead import BulkheadPolicy
from shoal.client._outlier import OutlierPolicy
from shoal.client._retry import RetryBudget, RetryBudgetPolicy, RetryPolicy
from shoal.client._transport import Timeouts
from shoal.client._upstream import Call, ClientSettings, Upstream, split_url
from shoal.discovery import EndpointListener, Resolver, Subscription, resolver_from_env

_JSON = "application/json"


class ClientBase:
    """Configuration and the per-upstream policy stacks; subclasses add the I/O."""

    def __init__(
        self,
        *,
        service: str,
        resolver: Resolver | None,
        balancer: BalancerName,
        retry: RetryPolicy | None,
        retry_budget: RetryBudgetPolicy | None,
        breaker: BreakerPolicy | None,
        outlier: OutlierPolicy | None,
        bulkhead: BulkheadPolicy | None,
        timeouts: Timeouts | None,
        clock: Clock | None,
        rng: random.Random | None,
    ) -> None:
        self.settings = ClientSettings(
            service=service,
            balancer=balancer,
            retry=retry or RetryPolicy(),
            retry_budget=retry_budget or RetryBudgetPolicy(),
            breaker=breaker or BreakerPolicy(),
            outlier=outlier or OutlierPolicy(),
            bulkhead=bulkhead or BulkheadPolicy(),
            timeouts=timeouts or Timeouts(),
        )
        self._resolver = resolver if resolver is not None else resolver_from_env()
        self._clock = clock or time.monotonic
        self._rng = rng or random.Random()  # noqa: S311 - jitter and balancing, not secrets
        self.retry_budget = RetryBudget(self.settings.retry_budget, clock=self._clock)
        self._upstreams: dict[str, Upstream] = {}
        self._subscriptions: list[Subscription] = []
        self._total = self.settings.timeouts.total

    def upstream(self, service: str) -> Upstream:
        """The policy stack of ``service`` (created and subscribed to discovery on first use;
        call it where the client's calls run: its event loop, or any thread for the sync
        client)."""
        upstream = self._upstreams.get(service)
        if upstream is None:
            upstream = Upstream(
                service, self.settings, budget=self.retry_budget, clock=self._clock, rng=self._rng
            )
            self._subscriptions.append(
                self._resolver.subscribe(service, self._listener(upstream)))
            upstream.apply_offered()  # the first table, before a call can read this upstream
            self._upstreams[service] = upstream
        return upstream

    def _listener(self, upstream: Upstream) -> EndpointListener:
        """What discovery calls, on its own threads, with ``upstream``'s endpoints: a store
        the next attempt applies; the shells also deliver it to their own context."""
        return upstream.offer_endpoints

    def _new_call(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        content: bytes | None,
        json: Any,
        timeout: float | None,
    ) -> tuple[Upstream, Call]:
        service, path = split_url(url)
        upstream = self._upstreams.get(service) or self.upstream(service)
        if json is not None:
            content = orjson.dumps(json)
            headers = {"content-type": _JSON, **(headers or {})}
        now = time.monotonic()
        limit = self._total if timeout is None else timeout
        own = None if limit is None else now + limit
        incoming = current_deadline()
        deadline: float | None
        if incoming is not None and (own is None or incoming <= own):
            deadline, bound = incoming, True
        else:
            deadline, bound = own, False
        return upstream, Call(
            method.upper(),
            path,
            headers=headers,
            body=content,
            deadline=deadline,
            deadline_bound=bound,
            started=now,
        )

    def _unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions.clear()
