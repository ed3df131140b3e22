"""The async client (FastAPI services): the policy stack over an :class:`AsyncTransport`."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from shoal._errors import ConfigurationError, UpstreamError
from shoal.client._balancer import BalancerName, Clock
from shoal.client._breaker import BreakerPolicy
from shoal.client._bulkhead import BulkheadPolicy
from shoal.client._outlier import OutlierPolicy
from shoal.client._retry import RetryBudgetPolicy, RetryPolicy
from shoal.client._shell import ClientBase
from shoal.client._transport import AsyncTransport, Request, Response, StreamingResponse, Timeouts
from shoal.client._upstream import Call, Fallback, Upstream, outcome_of
from shoal.discovery import Endpoint, EndpointListener, Resolver


class AsyncClient(ClientBase):
    """Calls other services by logical name: ``await client.get("http://users/users/42")``.

    Every call is balanced over the service's live instances (from ``resolver``, default
    ``$SHOAL_DISCOVERY``), carries the trace context, request id and remaining deadline,
    is bounded by the incoming request's deadline and ``timeouts``, passes the service's
    bulkhead and circuit breaker, and is retried under ``retry`` and the client's retry budget.
    Use one client per process (``async with AsyncClient(...) as client``, or :meth:`aclose`).

    Discovery updates arrive on the resolver's threads and are applied on the client's event
    loop (the one its calls run on): handed over with ``call_soon_threadsafe``, and taken up
    by the next attempt in any case (before the client's first call, or once its loop has
    closed). No other thread changes the table while a call reads it.
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
        transport: AsyncTransport | None = None,
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
            from shoal.client._aiohttp import AiohttpTransport  # noqa: PLC0415 - optional extra

            transport = AiohttpTransport(timeouts=self.settings.timeouts)
        self._transport = transport
        # (looked up once: ``stream`` is on a proxy's every request)
        self._stream_handle: Callable[[Request], Awaitable[StreamingResponse]] | None = getattr(
            transport, "handle_async_stream", None)
        self._sleep = asyncio.sleep  # tests swap it to observe backoff
        #: The loop the calls run on, bound by the first call (again once it has closed):
        #: where discovery updates are delivered.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the client enforces
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
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        upstream, call = self._new_call(
            method, url, headers=headers, content=content, json=json, timeout=timeout
        )
        try:
            return await self._send(upstream, call)
        except UpstreamError as exc:
            if fallback is not None and isinstance(exc, fallback.on):
                return upstream.degrade(fallback, exc)
            raise

    async def _send(self, upstream: Upstream, call: Call) -> Response:
        upstream.begin_call()
        outcome = "cancelled"
        try:
            while True:
                request = upstream.prepare_attempt(call)
                delay: float | None
                try:
                    response = await self._transport.handle_async_request(request)
                except UpstreamError as exc:
                    delay = upstream.after_error(call, exc)
                else:
                    delay = upstream.after_response(call, response)
                    if delay is None:
                        outcome = "success" if response.status < 400 else "client_error"
                        return response
                await self._sleep(delay)
        except UpstreamError as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            upstream.end_call(call, outcome)

    async def stream(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | AsyncIterable[bytes] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the client enforces
    ) -> StreamingResponse:
        """Send ``method url`` streaming: return once the response head has arrived, with the
        body still to be read (``async for chunk in response``); always ``await
        response.aclose()``.

        Same policies as :meth:`request` (balancing, outlier ejection, breaker, bulkhead,
        deadline, budgeted retries). ``body`` is sent as it is produced when it is an async
        iterable; such a body cannot be replayed, so the call is never retried. The call is
        accounted (breaker, outlier detection, metrics, bulkhead slot) when the head arrives.
        A 5xx answer raises :class:`UpstreamStatusError` (its body read, up to 64 KiB); the
        other errors are those of :meth:`request`. Needs a transport with
        ``handle_async_stream`` (the default aiohttp one has it).
        """
        handle = self._stream_handle
        if handle is None:
            raise ConfigurationError("transport", "this transport cannot stream")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        content: bytes | None = None
        stream: AsyncIterable[bytes] | None = None
        if body is None or isinstance(body, bytes):
            content = body
        else:
            stream = body
        upstream, call = self._new_call(
            method, url, headers=headers, content=content, json=None, timeout=timeout
        )
        call.stream = stream
        retry_statuses = self.settings.retry.retry_on_status
        upstream.begin_call()
        outcome = "cancelled"
        try:
            while True:
                request = upstream.prepare_attempt(call)
                delay: float | None
                try:
                    response: StreamingResponse = await handle(request)
                except UpstreamError as exc:
                    delay = upstream.after_error(call, exc)
                else:
                    if response.status >= 500 or response.status in retry_statuses:
                        response, delay = await _settle_error(upstream, call, response)
                    else:
                        delay = upstream.after_response(call, response)
                    if delay is None:
                        outcome = "success" if response.status < 400 else "client_error"
                        return response
                await self._sleep(delay)
        except UpstreamError as exc:
            outcome = outcome_of(exc)
            raise
        finally:
            upstream.end_call(call, outcome)

    async def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the client enforces
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("GET", url, ...)``."""
        return await self.request("GET", url, headers=headers, timeout=timeout, fallback=fallback)

    async def delete(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the client enforces
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("DELETE", url, ...)``."""
        return await self.request(
            "DELETE", url, headers=headers, timeout=timeout, fallback=fallback
        )

    async def post(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the client enforces
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("POST", url, ...)``: retried only with an ``Idempotency-Key`` header."""
        return await self.request(
            "POST", url, headers=headers, content=content, json=json, timeout=timeout,
            fallback=fallback,
        )

    async def put(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a deadline the client enforces
        fallback: Fallback | None = None,
    ) -> Response:
        """``request("PUT", url, ...)``."""
        return await self.request(
            "PUT", url, headers=headers, content=content, json=json, timeout=timeout,
            fallback=fallback,
        )

    def _listener(self, upstream: Upstream) -> EndpointListener:
        return _LoopDelivery(self, upstream)

    async def aclose(self) -> None:
        """Stop following discovery and close pooled connections (idempotent)."""
        self._unsubscribe()
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _LoopDelivery:
    """Discovery's listener for one upstream of an async client, called on the resolver's
    threads: stores the list (:meth:`Upstream.offer_endpoints`) and has the client's loop
    apply it. On the loop's own thread it is applied at once. Without a loop to hand it
    to (no call yet, or the loop has closed) it waits for the next attempt, which applies
    it before choosing an instance (:meth:`Upstream.prepare_attempt`); a closed loop is
    forgotten, so the next call binds its own."""

    __slots__ = ("client", "upstream")

    def __init__(self, client: AsyncClient, upstream: Upstream) -> None:
        self.client = client
        self.upstream = upstream

    def __call__(self, endpoints: Sequence[Endpoint]) -> None:
        upstream = self.upstream
        upstream.offer_endpoints(endpoints)
        loop = self.client._loop
        if loop is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            upstream.apply_offered()
            return
        try:
            loop.call_soon_threadsafe(upstream.apply_offered)
        except RuntimeError:  # closed: the next attempt, on the next loop, applies it
            if self.client._loop is loop:
                self.client._loop = None


_ERROR_BODY_LIMIT = 64 * 1024


class _OneChunk:
    """A body read already, iterated again as one chunk (a class: mypyc compiles no async
    generators)."""

    __slots__ = ("_content",)

    def __init__(self, content: bytes) -> None:
        self._content = content

    def __aiter__(self) -> _OneChunk:
        return self

    async def __anext__(self) -> bytes:
        content = self._content
        if not content:
            raise StopAsyncIteration
        self._content = b""
        return content


async def _nothing() -> None:
    return None


async def _settle_error(
    upstream: Upstream, call: Call, response: StreamingResponse
) -> tuple[StreamingResponse, float | None]:
    """Read a retryable or 5xx answer's (small) body so the retry decision or the
    :class:`UpstreamStatusError` has it; a final answer is handed back as a stream again."""
    try:
        error_body = await response.aread(_ERROR_BODY_LIMIT)
    except UpstreamError:
        error_body = b""
    finally:
        await response.aclose()
    read = Response(response.status, response.headers, error_body, instance=response.instance)
    delay = upstream.after_response(call, read)
    if delay is not None:
        return response, delay
    final = _buffered(read, response.raw_headers)
    final.attempts = call.attempt
    return final, None


def _buffered(response: Response, raw_headers: Sequence[tuple[bytes, bytes]]) -> StreamingResponse:
    """A read answer presented as a stream again (a final 4xx the retry policy looked at)."""
    return StreamingResponse(
        response.status, response.headers, raw_headers, _OneChunk(response.content), _nothing,
        instance=response.instance,
    )
