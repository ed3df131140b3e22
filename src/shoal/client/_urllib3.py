"""The sync transport over urllib3 (chosen by measurement over httpx's sync client)."""

from __future__ import annotations

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from shoal._errors import UpstreamConnectError, UpstreamResetError, UpstreamTimeoutError
from shoal.client._transport import Request, Response, Timeouts


class Urllib3Transport:
    """A thread-safe pooled ``urllib3.PoolManager``; urllib3 retries and redirects are off.

    Translates urllib3's errors: connect failures and connect timeouts →
    :class:`UpstreamConnectError`; read timeouts → :class:`UpstreamTimeoutError`; other
    protocol/connection errors → :class:`UpstreamResetError`.
    """

    def __init__(
        self, *, timeouts: Timeouts | None = None, max_connections_per_instance: int = 32
    ) -> None:
        self._timeouts = timeouts or Timeouts()
        self._pool = urllib3.PoolManager(
            maxsize=max_connections_per_instance, block=False, retries=False
        )
        self._default_timeout = self._timeout(None)

    def _timeout(self, total: float | None) -> urllib3.Timeout:
        return urllib3.Timeout(
            total=total, connect=self._timeouts.connect, read=self._timeouts.read
        )

    def handle_request(self, request: Request) -> Response:
        """Send ``request``; see the class docstring for the errors raised."""
        timeout = (
            self._default_timeout
            if request.timeout is None
            else self._timeout(request.timeout)
        )
        try:
            resp = self._pool.request(
                request.method,
                request.url,
                body=request.body,
                headers=request.headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=True,
            )
        except (ConnectTimeoutError, NewConnectionError) as exc:
            raise UpstreamConnectError(
                f"cannot connect to {request.instance}: {exc}",
                service=request.service,
                instance=request.instance,
            ) from exc
        except ReadTimeoutError as exc:
            raise UpstreamTimeoutError(
                f"{request.method} {request.url} timed out",
                service=request.service,
                instance=request.instance,
            ) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            # retries=False still wraps some errors; judge by the reason.
            reason = exc.reason
            cls = (
                UpstreamConnectError
                if isinstance(reason, ConnectTimeoutError | NewConnectionError)
                else UpstreamResetError
            )
            raise cls(
                f"{request.method} {request.url} failed: {reason}",
                service=request.service,
                instance=request.instance,
            ) from exc
        except (ProtocolError, HTTPError, OSError) as exc:
            raise UpstreamResetError(
                f"connection to {request.instance} broke: {exc}",
                service=request.service,
                instance=request.instance,
            ) from exc
        return Response(resp.status, resp.headers, resp.data, instance=request.instance)

    def close(self) -> None:
        self._pool.clear()
