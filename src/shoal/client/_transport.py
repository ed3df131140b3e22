"""The transport seam: one HTTP exchange with one instance, nothing more.

A transport sends a :class:`Request` to the absolute URL of a chosen instance and returns the
:class:`Response`; balancing, retries, breakers and deadlines live above it. Transports raise
only :class:`~shoal.UpstreamConnectError` (nothing reached the service: every request is
retried), :class:`~shoal.UpstreamResetError` (the connection broke after sending, before an
answer: only idempotent requests are retried), :class:`~shoal.UpstreamTimeoutError` and
:class:`~shoal.client.RequestBodyError` (the request's own streamed body raised), translated
from the library's own errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from shoal._errors import ConfigurationError, UpstreamStatusError


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Limits in seconds; ``None`` disables one. ``connect`` and ``read`` (between bytes) apply
    per attempt; ``total`` bounds the whole call - attempts and backoff - and the incoming
    request's deadline, when sooner, bounds it further."""

    connect: float | None = 1.0
    read: float | None = 10.0
    total: float | None = 15.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "total"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigurationError(f"timeouts.{name}", f"must be > 0 seconds, got {value}")


class Request:
    """One attempt: ``url`` is absolute (the instance's); ``timeout`` is the time left for
    the whole attempt (``None``: unbounded). ``stream``, when set, is a request body sent
    chunk by chunk as it is produced (streaming transports only; it cannot be replayed)."""

    __slots__ = ("body", "headers", "instance", "method", "service", "stream", "timeout", "url")

    def __init__(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        body: bytes | None,
        timeout: float | None,
        service: str,
        instance: str,
        stream: AsyncIterable[bytes] | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.stream = stream
        self.timeout = timeout
        #: For error messages: the logical service and the instance's base URL.
        self.service = service
        self.instance = instance

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


class Response:
    """An answer from an upstream, or (``degraded``) the call site's fallback."""

    __slots__ = ("attempts", "content", "degraded", "headers", "instance", "status")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str] | None = None,
        content: bytes = b"",
        *,
        instance: str | None = None,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.content = content
        #: The instance that answered (``None`` for a fallback).
        self.instance = instance
        #: Attempts the call made (set by the client).
        self.attempts = 0
        #: ``None``, or the name of the error a fallback replaced (the result is degraded).
        self.degraded: str | None = None

    @classmethod
    def from_json(cls, data: Any, status: int = 200) -> Response:
        """A response with ``data`` as its JSON body (handy for fallbacks and mocks)."""
        return cls(status, {"content-type": "application/json"}, orjson.dumps(data))

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        """The body parsed as JSON (raises ``orjson.JSONDecodeError``, a ``ValueError``)."""
        return orjson.loads(self.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    def raise_for_status(self, service: str = "") -> Response:
        """Return ``self`` for 1xx-3xx; raise :class:`UpstreamStatusError` for 4xx/5xx."""
        if self.status < 400:
            return self
        raise UpstreamStatusError(
            f"{service or 'upstream'} answered {self.status}",
            service=service,
            status=self.status,
            headers=self.headers,
            body=self.content,
            instance=self.instance,
            attempts=self.attempts,
        )

    def __repr__(self) -> str:
        degraded = f" degraded={self.degraded}" if self.degraded else ""
        return f"<Response {self.status} from {self.instance}{degraded}>"


class StreamingResponse:
    """An answer whose body has not been read yet: iterate it (``async for chunk in
    response``) or :meth:`aread` it, then :meth:`aclose` (always; idempotent) to give the
    connection back. ``raw_headers`` keeps repeated headers (``set-cookie``) as sent.

    Reading raises :class:`~shoal.UpstreamResetError` when the connection breaks and
    :class:`~shoal.UpstreamTimeoutError` when the read timeout or the deadline elapses.
    """

    __slots__ = ("_body", "_close", "attempts", "headers", "instance", "raw_headers", "status")

    def __init__(
        self,
        status: int,
        headers: Mapping[str, str],
        raw_headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        *,
        instance: str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.raw_headers = raw_headers
        self._body = body
        self._close = close
        self.instance = instance
        #: Attempts the call made (set by the client).
        self.attempts = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body

    def body_if_complete(self) -> bytes | None:
        """The rest of the body when the transport already holds all of it (nothing to wait
        for), else ``None`` (then iterate). Lets a relay answer in one write. A transport
        that can tell overrides this; in general the answer is ``None``."""
        return None

    async def aread(self, limit: int | None = None) -> bytes:
        """The rest of the body (at most ``limit`` bytes: the remainder is discarded)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self:  # (through __aiter__, which a transport may override)
            if limit is not None and size + len(chunk) > limit:
                parts.append(chunk[: limit - size])
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Release the connection (a body not read to the end closes it)."""
        await self._close()

    def __repr__(self) -> str:
        return f"<StreamingResponse {self.status} from {self.instance}>"


class AsyncTransport(Protocol):
    """Sends one attempt; raises only the transport errors listed in the module docstring."""

    async def handle_async_request(self, request: Request) -> Response: ...

    async def aclose(self) -> None: ...


class AsyncStreamingTransport(AsyncTransport, Protocol):
    """An :class:`AsyncTransport` that can also stream: the request body from
    ``request.stream`` and the response body to the caller as it arrives."""

    async def handle_async_stream(self, request: Request) -> StreamingResponse: ...


class SyncTransport(Protocol):
    """Blocking twin of :class:`AsyncTransport`."""

    def handle_request(self, request: Request) -> Response: ...

    def close(self) -> None: ...


Handler = Callable[[Request], Response]


class MockTransport:
    """Answers every attempt with ``handler(request)`` - in process, for tests. The handler
    may raise the transport errors to simulate failures. Usable as sync and async transport;
    an async handler may be given as ``async_handler``."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        async_handler: Callable[[Request], Awaitable[Response]] | None = None,
    ) -> None:
        if (handler is None) == (async_handler is None):
            raise ConfigurationError("handler", "give exactly one of handler, async_handler")
        self._handler = handler
        self._async_handler = async_handler
        self.requests: list[Request] = []

    def handle_request(self, request: Request) -> Response:
        if self._handler is None:
            raise ConfigurationError("handler", "this MockTransport only has an async_handler")
        self.requests.append(request)
        return self._handler(request)

    async def handle_async_request(self, request: Request) -> Response:
        self.requests.append(request)
        if self._async_handler is not None:
            return await self._async_handler(request)
        assert self._handler is not None
        return self._handler(request)

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
