"""A small, thread-safe client of etcd's v3 JSON gateway (``/v3/...``), standard library only.

Why the gateway over ``http.client`` rather than a gRPC client: the maintained-looking Python
etcd clients pin old grpc/protobuf releases, and registration runs inside every service, Flask
ones included, which install neither aiohttp nor urllib3. The gateway ships with etcd (v3.4+),
speaks JSON, and the handful of calls discovery needs (range, put, lease grant/keep-alive/revoke,
watch) are each one POST.

Failover: the client prefers one member and moves to the next on a connection error, a timeout
or an "unavailable" answer (no leader, leader changed, ...); a call fails only when every member
failed it. Every request carries ``Grpc-Metadata-Hasleader: true``, so a member cut off from
the leader refuses (and cancels its watches) instead of serving a stale view.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from shoal._errors import ShoalError
from shoal.discovery._etcd_table import EtcdConfig, b64, prefix_range_end

_HEADERS = {"Content-Type": "application/json", "Grpc-Metadata-Hasleader": "true"}
#: gRPC codes worth another member: Canceled, Unknown, DeadlineExceeded, ResourceExhausted,
#: Aborted, Internal, Unavailable (etcd's "no leader", "leader changed", "request timed out").
_RETRYABLE_CODES = frozenset({1, 2, 4, 8, 10, 13, 14})
_NOT_FOUND = 5


class EtcdError(ShoalError):
    """An etcd request failed. ``endpoint`` is the member that failed it last, ``code`` the gRPC
    status code etcd answered (``None`` for a transport failure: refused, reset, timed out)."""

    def __init__(self, message: str, *, endpoint: str | None = None, code: int | None = None,
                 idle: bool = False) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.code = code
        #: A watch stream was silent for its whole idle timeout (not a failure of the member).
        self.idle = idle

    @property
    def retryable(self) -> bool:
        """Whether another member (or a later attempt) may well succeed."""
        return self.code is None or self.code in _RETRYABLE_CODES


class EtcdCompactedError(EtcdError):
    """A watch asked for history etcd has compacted away: list again, then watch."""

    def __init__(self, message: str, *, endpoint: str, compact_revision: int) -> None:
        super().__init__(message, endpoint=endpoint, code=11)
        self.compact_revision = compact_revision


def _hostport(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    return parts.hostname or "127.0.0.1", parts.port or 2379


def _answer_error(endpoint: str, path: str, status: int, data: bytes) -> EtcdError:
    try:
        body = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if isinstance(body.get("error"), dict):  # streaming calls nest it
        body = body["error"]
    message = body.get("message") or body.get("error") or f"HTTP {status}"
    code = body.get("code", body.get("grpc_code"))  # unary / streaming error shapes
    if not isinstance(code, int):
        code = 14 if status >= 500 else 2
    return EtcdError(f"{endpoint}{path}: {message}", endpoint=endpoint, code=code)


class WatchStream:
    """One open watch: iterate it for watch responses (``{"header":…, "events": […]}``).

    Iteration raises :class:`EtcdError` when the stream ends for any reason (member gone, no
    leader, idle timeout: ``idle=True``) and :class:`EtcdCompactedError` when the requested
    revision was compacted. :meth:`close` may be called from another thread to end it.
    """

    def __init__(self, endpoint: str, conn: http.client.HTTPConnection,
                 response: http.client.HTTPResponse) -> None:
        self.endpoint = endpoint
        self._conn = conn
        self._response = response
        self._closed = False

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_response()

    def next_response(self) -> dict[str, Any]:
        """The next watch response; blocks until one arrives (or raises, see the class)."""
        try:
            line = self._response.readline()
        except TimeoutError as exc:
            raise EtcdError(f"{self.endpoint}: watch idle", endpoint=self.endpoint,
                            idle=True) from exc
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            # (AttributeError: http.client tripping over a connection shut down under it.)
            raise EtcdError(f"{self.endpoint}: watch broke: {type(exc).__name__}: {exc}",
                            endpoint=self.endpoint) from exc
        if not line:
            reason = "closed" if self._closed else "ended by the member"
            raise EtcdError(f"{self.endpoint}: watch stream {reason}", endpoint=self.endpoint)
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise EtcdError(f"{self.endpoint}: bad watch message {line[:200]!r}",
                            endpoint=self.endpoint) from exc
        if "error" in message:
            raise _answer_error(self.endpoint, "/v3/watch", 503, line)
        result: dict[str, Any] = message.get("result") or {}
        if result.get("canceled"):
            compact = int(result.get("compact_revision") or 0)
            if compact:
                raise EtcdCompactedError(
                    f"{self.endpoint}: watch revision compacted (now {compact})",
                    endpoint=self.endpoint, compact_revision=compact)
            reason = result.get("cancel_reason") or "canceled"
            raise EtcdError(f"{self.endpoint}: watch canceled: {reason}", endpoint=self.endpoint,
                            code=14)
        return result

    def interrupt(self) -> None:
        """Make a reader blocked in another thread return (it raises :class:`EtcdError`);
        that thread then closes the stream. Idempotent."""
        self._closed = True
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """End the stream and release its connection (idempotent; call it from the thread that
        reads, or when nobody reads: other threads :meth:`interrupt`)."""
        self.interrupt()
        self._conn.close()


class EtcdClient:
    """Requests to an etcd cluster's JSON gateway with failover across its members.

    ``timeout`` bounds each request to one member. Thread-safe: requests are serialised on one
    keep-alive connection per member (discovery makes a few requests per second at most).
    """

    def __init__(self, endpoints: Sequence[str] | EtcdConfig, *, timeout: float = 2.0) -> None:
        urls = endpoints.endpoints if isinstance(endpoints, EtcdConfig) else tuple(endpoints)
        if not urls:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints: tuple[str, ...] = tuple(u.rstrip("/") for u in urls)
        self.timeout = timeout
        self._preferred = 0
        self._conns: dict[str, http.client.HTTPConnection] = {}
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """The member tried first."""
        return self.endpoints[self._preferred]

    def failed(self, endpoint: str) -> None:
        """Note that ``endpoint`` failed (e.g. its watch broke): prefer the next member."""
        with self._lock:
            if self.endpoints[self._preferred] == endpoint:
                self._preferred = (self._preferred + 1) % len(self.endpoints)
            self._drop(endpoint)

    def close(self) -> None:
        """Close the pooled connections (the client stays usable; idempotent)."""
        with self._lock:
            for endpoint in list(self._conns):
                self._drop(endpoint)

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the calls discovery uses ------------------------------------------------------------

    def call(self, path: str, body: Mapping[str, Any], *,
             deadline: float | None = None) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the preferred member, then the others.

        ``deadline`` (``time.monotonic()``) bounds the whole call. Raises :class:`EtcdError`:
        at once for an answer no other member would change (``retryable`` is false), else once
        every member failed or the deadline passed.
        """
        payload = orjson.dumps(body)
        with self._lock:
            last: EtcdError | None = None
            for _ in range(len(self.endpoints)):
                timeout = self.timeout
                if deadline is not None:
                    timeout = min(timeout, deadline - time.monotonic())
                    if timeout <= 0:
                        break
                endpoint = self.endpoints[self._preferred]
                try:
                    return self._request(endpoint, path, payload, timeout)
                except EtcdError as exc:
                    if not exc.retryable:
                        raise
                    last = exc
                    self._drop(endpoint)
                    self._preferred = (self._preferred + 1) % len(self.endpoints)
        if last is None:
            raise EtcdError(f"{path}: deadline passed before any etcd member was tried")
        raise EtcdError(f"no etcd member answered {path}; last: {last}",
                        endpoint=last.endpoint, code=last.code)

    def put(self, key: str, value: bytes, *, lease: int = 0,
            deadline: float | None = None) -> int:
        """Store ``value`` under ``key`` (attached to ``lease`` if given); the new revision."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body, deadline=deadline)["header"]["revision"])

    def delete(self, key: str, *, deadline: float | None = None) -> int:
        """Delete ``key``; the number of keys deleted (0 or 1)."""
        answer = self.call("/v3/kv/deleterange", {"key": b64(key)}, deadline=deadline)
        return int(answer.get("deleted") or 0)

    def range_prefix(self, prefix: str, *,
                     deadline: float | None = None) -> tuple[list[dict[str, Any]], int]:
        """Every key-value under ``prefix`` (linearizable read) and the store revision."""
        answer = self.call("/v3/kv/range",
                           {"key": b64(prefix), "range_end": prefix_range_end(prefix)},
                           deadline=deadline)
        return list(answer.get("kvs") or []), int(answer["header"]["revision"])

    def grant(self, ttl: int, *, deadline: float | None = None) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds: ``(lease id, granted ttl)`` (etcd may raise the TTL
        to its minimum)."""
        answer = self.call("/v3/lease/grant", {"TTL": str(ttl)}, deadline=deadline)
        if answer.get("error"):
            raise EtcdError(f"lease grant refused: {answer['error']}")
        return int(answer["ID"]), int(answer.get("TTL") or ttl)

    def keepalive(self, lease: int, *, deadline: float | None = None) -> int:
        """Renew ``lease``; its TTL now, 0 when the lease has expired or was revoked."""
        answer = self.call("/v3/lease/keepalive", {"ID": str(lease)}, deadline=deadline)
        result = answer.get("result") or {}
        return int(result.get("TTL") or 0)

    def revoke(self, lease: int, *, deadline: float | None = None) -> bool:
        """Revoke ``lease`` (its keys are deleted with it); ``False`` if it was already gone."""
        try:
            self.call("/v3/lease/revoke", {"ID": str(lease)}, deadline=deadline)
        except EtcdError as exc:
            if exc.code == _NOT_FOUND:
                return False
            raise
        return True

    def member_status(self, endpoint: str) -> dict[str, Any]:
        """``/v3/maintenance/status`` of one member (leader id, raft term, version)."""
        return self._request(endpoint, "/v3/maintenance/status", b"{}", self.timeout,
                             reuse=False)

    def watch(self, prefix: str, *, start_revision: int, idle_timeout: float) -> WatchStream:
        """Watch every key under ``prefix`` from ``start_revision`` on, on the preferred member
        (then the others). A silent stream ends after ``idle_timeout`` seconds (``idle=True``).

        Raises :class:`EtcdCompactedError` when ``start_revision`` is compacted, else
        :class:`EtcdError` when no member opened the watch.
        """
        body = orjson.dumps({"create_request": {
            "key": b64(prefix), "range_end": prefix_range_end(prefix),
            "start_revision": str(start_revision),
        }})
        last: EtcdError | None = None
        for _ in range(len(self.endpoints)):
            endpoint = self.endpoint
            try:
                return self._open_watch(endpoint, body, idle_timeout)
            except EtcdCompactedError:
                raise
            except EtcdError as exc:
                if not exc.retryable:
                    raise
                last = exc
                self.failed(endpoint)
        assert last is not None
        raise last

    # -- plumbing ----------------------------------------------------------------------------

    def _open_watch(self, endpoint: str, body: bytes, idle_timeout: float) -> WatchStream:
        host, port = _hostport(endpoint)
        conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        try:
            conn.request("POST", "/v3/watch", body=body, headers=_HEADERS)
            response = conn.getresponse()
            if response.status != 200:
                raise _answer_error(endpoint, "/v3/watch", response.status, response.read())
            stream = WatchStream(endpoint, conn, response)
            stream.next_response()  # "created": the watch is in place from here on
            if conn.sock is not None:
                conn.sock.settimeout(idle_timeout)
        except EtcdError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise EtcdError(f"{endpoint}/v3/watch: {type(exc).__name__}: {exc}",
                            endpoint=endpoint) from exc
        return stream

    def _drop(self, endpoint: str) -> None:
        conn = self._conns.pop(endpoint, None)
        if conn is not None:
            conn.close()

    def _request(self, endpoint: str, path: str, payload: bytes, timeout: float, *,
                 reuse: bool = True) -> dict[str, Any]:
        conn = self._conns.get(endpoint) if reuse else None
        fresh = conn is None
        if conn is None:
            host, port = _hostport(endpoint)
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("POST", path, body=payload, headers=_HEADERS)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            self._conns.pop(endpoint, None)
            if not fresh and isinstance(exc, (http.client.RemoteDisconnected, ConnectionError)):
                # The member closed an idle keep-alive connection: not a failure of the member.
                return self._request(endpoint, path, payload, timeout, reuse=False)
            raise EtcdError(f"{endpoint}{path}: {type(exc).__name__}: {exc}",
                            endpoint=endpoint) from exc
        if reuse and not response.will_close:
            self._conns[endpoint] = conn
        else:
            conn.close()
            self._conns.pop(endpoint, None)
        if response.status != 200:
            raise _answer_error(endpoint, path, response.status, data)
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise EtcdError(f"{endpoint}{path}: not JSON: {data[:200]!r}",
                            endpoint=endpoint) from exc
        if not isinstance(answer, dict):
            raise EtcdError(f"{endpoint}{path}: unexpected answer {data[:200]!r}",
                            endpoint=endpoint)
        if isinstance(answer.get("error"), dict):  # streaming calls answer 200 with an error
            raise _answer_error(endpoint, path, 503, data)
        return answer
