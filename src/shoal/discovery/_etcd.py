"""The etcd resolver: one list of the registry prefix, then one watch stream keeping it current.

::

    resolver = EtcdResolver("etcd+http://127.0.0.1:2379,127.0.0.1:22379")
    resolver.subscribe("users", upstream.offer_endpoints)

A daemon thread owns the table. It lists every key under ``{root}/services/`` once, then
watches the prefix from the next revision, so no change is missed or seen twice. A broken
stream (member killed, leader lost, idle timeout) is reopened on the next member from the last
revision seen; only a compacted revision makes it list again. Requests never wait on etcd.
Listeners are called on that thread (a client applies the list on its own loop or under its
lock: docs/discovery.md, "Where an update is applied").
"""

from __future__ import annotations

import random
import threading

from shoal._logging import get_logger
from shoal.discovery._base import Endpoint, EndpointListener
from shoal.discovery._etcd_client import EtcdClient, EtcdCompactedError, EtcdError, WatchStream
from shoal.discovery._etcd_table import EndpointTable, EtcdConfig, parse_etcd, reconnect_delay

_log = get_logger("shoal.discovery.etcd")


class _EtcdSubscription:
    __slots__ = ("_listener", "_resolver", "_service")

    def __init__(self, resolver: EtcdResolver, service: str, listener: EndpointListener) -> None:
        self._resolver = resolver
        self._service = service
        self._listener = listener

    def cancel(self) -> None:
        self._resolver._unsubscribe(self._service, self._listener)


class EtcdResolver:
    """Endpoint tables pushed from etcd (the :class:`~shoal.discovery.Resolver` protocol).

    Starts watching at construction. :meth:`subscribe` delivers what is known (waiting for the
    first list at most ``initial_wait`` seconds, once) and every change after, on the watching
    thread. ``idle_timeout`` reopens a stream silent that long (a half-open TCP
    connection would otherwise go unnoticed); reconnections back off exponentially with full
    jitter from ``backoff_base`` to ``backoff_cap`` seconds while every member fails.
    """

    def __init__(
        self,
        config: EtcdConfig | str,
        *,
        client: EtcdClient | None = None,
        timeout: float = 2.0,
        idle_timeout: float = 60.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
        initial_wait: float = 2.0,
    ) -> None:
        self.config = parse_etcd(config) if isinstance(config, str) else config
        self._initial_wait = initial_wait
        self._waited = False
        self._client = client or EtcdClient(self.config, timeout=timeout)
        self._idle_timeout = idle_timeout
        self._backoff = (backoff_base, backoff_cap)
        self._table = EndpointTable(self.config.prefix)
        self._views: dict[str, tuple[Endpoint, ...]] = {}
        self._listeners: dict[str, list[EndpointListener]] = {}
        # Held while delivering, so a new subscriber's first list is never older than a
        # concurrent update's.
        self._deliver = threading.RLock()
        self._synced = threading.Event()
        self._closed = threading.Event()
        self._stream: WatchStream | None = None
        self._stream_lock = threading.Lock()
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets
        self._thread = threading.Thread(target=self._run, name="shoal-etcd-watch", daemon=True)
        self._thread.start()

    # -- the Resolver protocol ---------------------------------------------------------------

    def subscribe(self, service: str, listener: EndpointListener) -> _EtcdSubscription:
        """See :meth:`shoal.discovery.Resolver.subscribe`.

        Until the first list has arrived, waits for it up to ``initial_wait`` seconds (once
        per resolver: with etcd unreachable at start, later subscriptions do not wait), so the
        first call already has a table. After that it never touches the network.
        """
        if not self._synced.is_set() and not self._waited:
            self._waited = True
            self._synced.wait(self._initial_wait)
        with self._deliver:
            self._listeners.setdefault(service, []).append(listener)
            listener(self._views.get(service, ()))
        return _EtcdSubscription(self, service, listener)

    def _unsubscribe(self, service: str, listener: EndpointListener) -> None:
        with self._deliver:
            listeners = self._listeners.get(service, [])
            if listener in listeners:
                listeners.remove(listener)

    def close(self) -> None:
        """Stop watching (idempotent); returns once the watching thread is gone (≤ 5 s)."""
        self._closed.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.interrupt()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._client.close()
        with self._deliver:
            self._listeners.clear()

    # -- for tools and tests -----------------------------------------------------------------

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        """``service``'s current endpoints (clients subscribe instead)."""
        with self._deliver:
            return self._views.get(service, ())

    def snapshot(self) -> dict[str, tuple[Endpoint, ...]]:
        """Every service with registered instances and its endpoints."""
        with self._deliver:
            return dict(self._views)

    def wait_synced(self, timeout: float) -> bool:
        """Block until the first complete list arrived (``True``), or ``timeout`` passed."""
        return self._synced.wait(timeout)

    @property
    def revision(self) -> int:
        """The etcd revision the tables reflect."""
        return self._table.revision

    # -- the watching thread -----------------------------------------------------------------

    def _publish(self, changed: set[str]) -> None:
        if not changed:
            return
        with self._deliver:
            for service in changed:
                view = self._table.endpoints(service)
                if view:
                    self._views[service] = view
                else:
                    self._views.pop(service, None)
                for listener in list(self._listeners.get(service, ())):
                    try:
                        listener(view)
                    except Exception:  # noqa: BLE001 - a listener's bug must not stop discovery
                        _log.exception("discovery.listener_failed", service=service)

    def _list(self) -> None:
        kvs, revision = self._client.range_prefix(self.config.prefix)
        self._publish(self._table.reset(kvs, revision))
        if not self._synced.is_set():
            self._synced.set()
            _log.info("discovery.etcd.synced", instances=len(self._table), revision=revision,
                      endpoint=self._client.endpoint)

    def _watch(self, failures: int) -> None:
        """Open a watch from the next revision and apply it until it breaks (always raises,
        or returns when the resolver is closed)."""
        stream = self._client.watch(self.config.prefix, start_revision=self._table.revision + 1,
                                    idle_timeout=self._idle_timeout)
        with self._stream_lock:
            if self._closed.is_set():
                stream.close()
                return
            self._stream = stream
        try:
            if failures:
                _log.info("discovery.etcd.reconnected", endpoint=stream.endpoint,
                          revision=self._table.revision, failures=failures)
            for result in stream:
                events = result.get("events")
                if events:
                    self._publish(self._table.apply(events))
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()

    def _run(self) -> None:
        need_list = True
        failures = 0
        while not self._closed.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch(failures)
            except EtcdCompactedError as exc:
                need_list = True
                _log.info("discovery.etcd.relist", reason="compacted",
                          compact_revision=exc.compact_revision)
            except EtcdError as exc:
                if self._closed.is_set():
                    return
                if exc.idle:
                    failures = 0
                    continue
                if exc.endpoint is not None:
                    self._client.failed(exc.endpoint)
                failures += 1
                delay = reconnect_delay(failures, base=self._backoff[0], cap=self._backoff[1],
                                        jitter=self._rng.random())
                log = _log.warning if failures == 1 or failures % 20 == 0 else _log.debug
                log("discovery.etcd.watch_failed", error=str(exc), failures=failures,
                    retry_in_s=round(delay, 3))
                self._closed.wait(delay)
            except Exception:  # noqa: BLE001 - the thread must not die: the table would freeze
                _log.exception("discovery.etcd.watch_crashed")
                need_list = True
                self._closed.wait(self._backoff[1])

def etcd_resolver(config: str) -> EtcdResolver:
    """The ``SHOAL_DISCOVERY=etcd+http://...`` factory."""
    return EtcdResolver(parse_etcd(config))

