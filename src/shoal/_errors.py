"""Shoal's exceptions, rooted in one class so callers can catch everything Shoal raises.

::

    ShoalError
    ├── ConfigurationError          a setting or argument is invalid (names the setting)
    ├── ProblemError                an HTTP problem a service handler raises (RFC 9457)
    └── UpstreamError               a call to another service failed (service, instance, attempts)
        ├── NoHealthyInstanceError  discovery knows no usable instance of the service
        ├── CircuitOpenError        the service's breaker is open: failing fast
        ├── BulkheadFullError       too many concurrent calls to the service: failing fast
        ├── DeadlineExceededError   the request's deadline is spent
        ├── UpstreamTransportError  the exchange with the instance failed at the transport level
        │   ├── UpstreamConnectError  nothing was sent: connecting failed (always safe to retry)
        │   └── UpstreamResetError    the connection broke after the request may have been sent
        ├── RequestBodyError        the caller's own streamed body failed (not the service)
        ├── UpstreamTimeoutError    the connect/read/total timeout elapsed
        └── UpstreamStatusError     the service answered with an error status (kept response data)

The errors other packages define derive from :class:`ShoalError` too: ``SpecError`` (an invalid
platform spec), ``PlatformError`` and ``RolloutError`` (the local platform), ``EtcdError``
(etcd discovery) and ``AuthError`` (a request refused by the gateway's JWT check).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar


class ShoalError(Exception):
    """Root of every exception Shoal raises."""


class ConfigurationError(ShoalError, ValueError):
    """A setting or argument is invalid; ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class ProblemError(ShoalError):
    """Raise in a handler to answer with an RFC 9457 ``application/problem+json`` body.

    ``errors`` lists field-level problems as ``{"field": ..., "message": ...}`` mappings;
    ``headers`` are added to the response (``Retry-After``, ``Location`` ...); ``extra`` members
    are merged into the problem object.
    """

    def __init__(
        self,
        status: int,
        title: str | None = None,
        detail: str | None = None,
        *,
        type: str = "about:blank",
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title or str(status))
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type
        self.errors = list(errors) if errors else []
        self.headers = dict(headers) if headers else {}
        self.extra = dict(extra) if extra else {}


class UpstreamError(ShoalError):
    """A call to another service failed.

    ``service`` is the logical name called, ``instance`` the endpoint of the last attempt (when
    one was chosen) and ``attempts`` how many attempts were made.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str,
        instance: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.instance = instance
        self.attempts = attempts


class NoHealthyInstanceError(UpstreamError):
    """Discovery has no usable (registered, non-ejected) instance of ``service``."""


class CircuitOpenError(UpstreamError):
    """The breaker of ``service`` is open; ``retry_after`` seconds until it admits a probe."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        retry_after: float,
        instance: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, service=service, instance=instance, attempts=attempts)
        self.retry_after = retry_after


class BulkheadFullError(UpstreamError):
    """``limit`` concurrent calls to ``service`` are already in flight."""

    def __init__(self, message: str, *, service: str, limit: int) -> None:
        super().__init__(message, service=service)
        self.limit = limit


class DeadlineExceededError(UpstreamError):
    """The deadline of the current request is spent; no further attempt is made."""


class UpstreamTransportError(UpstreamError):
    """The exchange with the instance failed at the transport level, before a response.

    Catch it to handle both of its kinds alike; they differ in whether the service may have
    acted on the request: :class:`UpstreamConnectError` (nothing was sent) and
    :class:`UpstreamResetError` (the request may have been applied).
    """


class UpstreamConnectError(UpstreamTransportError):
    """Connecting to the instance failed: no byte of the request was sent.

    The service cannot have acted on the request, so every request is retried after it.
    """


class UpstreamResetError(UpstreamTransportError):
    """The connection closed or reset after the request may have been sent, before a response.

    Unlike :class:`UpstreamConnectError`, the service may have acted on the request, so only
    idempotent requests are retried after it.
    """


class RequestBodyError(UpstreamError):
    """The request's streamed body raised (its ``__cause__``): the caller left or sent a bad
    body. The service is not at fault, so this is no transport error of the instance: the
    call is neither retried nor counted against the service (breaker, outlier ejection)."""


class UpstreamTimeoutError(UpstreamError):
    """A connect, read or total timeout elapsed."""


class UpstreamStatusError(UpstreamError):
    """The service answered with an error status after all permitted attempts."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        status: int,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        instance: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, service=service, instance=instance, attempts=attempts)
        self.status = status
        self.headers = dict(headers) if headers else {}
        self.body = body


_E = TypeVar("_E", bound=BaseException)


def caused(error: _E, cause: BaseException) -> _E:
    """``error`` with ``cause`` as its ``__cause__``: write ``raise caused(err, exc) from exc``.

    In modules compiled by mypyc (``tools/native.py``) the ``from`` clause of a ``raise`` is
    dropped (mypy 2.4), so the cause is set here; in interpreted code ``from`` sets the same
    value again.
    """
    error.__cause__ = cause
    return error
