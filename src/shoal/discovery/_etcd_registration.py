"""Keeping one instance registered in etcd: a lease, its keep-alive, and readiness gating.

::

    registration = EtcdRegistration(
        "etcd+http://127.0.0.1:2379", service="users", instance="host-4242",
        url="http://127.0.0.1:8001", ttl=10, ready=probe,
    ).start()
    ...
    registration.deregister()   # first thing when the drain starts

The instance key lives exactly as long as its lease: a process killed with SIGKILL stops
renewing and etcd deletes the key ``ttl`` seconds later; a clean drain revokes the lease, which
deletes the key at once. While ``ready()`` is false the instance is not registered (readiness
gates traffic), and it re-registers with a new lease whenever the old one was lost (e.g. etcd
unreachable for longer than the TTL).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable

from shoal._logging import get_logger
from shoal.discovery._etcd_client import EtcdClient, EtcdError
from shoal.discovery._etcd_table import (
    EtcdConfig,
    encode_record,
    instance_key,
    parse_etcd,
    reconnect_delay,
)

_log = get_logger("shoal.registration")
_FIRST_PROBE = 0.05


class EtcdRegistration:
    """One instance's registration, kept by a daemon thread between :meth:`start` and
    :meth:`deregister` (or :meth:`close`).

    ``ttl`` is the lease in whole seconds (etcd may raise it to its minimum, about 2 s by
    default); the lease is renewed every ``ttl / 3``. ``ready`` is asked before registering and
    at every renewal; false or raising means "not ready": the lease is revoked until it is ready
    again. Without it the instance counts as ready.
    """

    def __init__(
        self,
        config: EtcdConfig | str,
        *,
        service: str,
        instance: str,
        url: str,
        ttl: int = 10,
        ready: Callable[[], bool] | None = None,
        timeout: float = 2.0,
        backoff_cap: float = 2.0,
    ) -> None:
        if ttl < 1:
            raise ValueError(f"ttl must be at least 1 second, got {ttl}")
        self.config = parse_etcd(config) if isinstance(config, str) else config
        self.service = service
        self.instance = instance
        self.url = url
        self.ttl = ttl
        self.key = instance_key(self.config.prefix, service, instance)
        self._value = encode_record(service=service, instance=instance, url=url)
        self._ready = ready
        self._interval = ttl / 3
        self._backoff_cap = min(backoff_cap, self._interval)
        # The thread's client, and a separate one for deregister(): the drain must not queue
        # behind a keep-alive stuck on a dead member.
        self._client = EtcdClient(self.config, timeout=timeout)
        self._drain_client = EtcdClient(self.config, timeout=timeout)
        self._state = threading.Lock()
        self._lease: int | None = None
        self._registered = False
        self._stopped = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()  # noqa: S311 - jitter, not secrets

    @property
    def registered(self) -> bool:
        """Whether the key is in etcd as far as this process knows."""
        return self._registered

    @property
    def lease(self) -> int | None:
        return self._lease

    def start(self) -> EtcdRegistration:
        """Start registering (in the background; returns at once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"shoal-registration-{self.service}", daemon=True)
            self._thread.start()
        return self

    def deregister(self, *, timeout: float = 2.0) -> bool:
        """Remove the instance now and for good: revoke the lease (its key goes with it).

        Blocks at most ``timeout`` seconds. Returns ``False`` when etcd could not be told; the
        key then disappears when the lease expires, within ``ttl`` seconds. Idempotent.
        """
        with self._state:
            already = self._stopped
            self._stopped = True
            lease, self._lease = self._lease, None
            self._registered = False
        self._wake.set()
        if lease is None:
            if not already:
                _log.info("registration.stopped", service=self.service, instance=self.instance)
            return True
        try:
            self._drain_client.revoke(lease, deadline=time.monotonic() + timeout)
        except EtcdError as exc:
            _log.warning("registration.revoke_failed", service=self.service,
                         instance=self.instance, error=str(exc), expires_in_s=self.ttl)
            return False
        _log.info("registration.removed", service=self.service, instance=self.instance,
                  url=self.url, reason="deregistered")
        return True

    def close(self) -> None:
        """:meth:`deregister`, then wait for the thread to finish and release connections."""
        self.deregister()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._client.close()
        self._drain_client.close()

    # -- the thread ----------------------------------------------------------------------------

    def _is_ready(self) -> bool:
        if self._ready is None:
            return True
        try:
            return bool(self._ready())
        except Exception:  # noqa: BLE001 - a failing probe means "not ready"
            return False

    def _run(self) -> None:
        failures = 0
        probe_wait = _FIRST_PROBE
        next_renewal = 0.0
        while not self._stopped:
            wait = self._interval
            try:
                ready = self._is_ready()
                if self._stopped:
                    break
                if ready and self._lease is None:
                    self._register()
                    next_renewal = time.monotonic() + self._interval
                elif not ready and self._lease is not None:
                    self._withdraw()
                elif self._lease is not None and time.monotonic() >= next_renewal:
                    if self._client.keepalive(self._lease) > 0:
                        next_renewal = time.monotonic() + self._interval
                    else:
                        self._lease_lost()
                        continue
                if self._lease is None:
                    # Not ready yet: look again soon, less often the longer it takes.
                    wait, probe_wait = probe_wait, min(probe_wait * 1.5, self._interval)
                else:
                    probe_wait = _FIRST_PROBE
                    wait = max(0.0, next_renewal - time.monotonic())
                failures = 0
            except EtcdError as exc:
                if self._stopped:
                    break
                failures += 1
                wait = reconnect_delay(failures, base=0.05, cap=self._backoff_cap,
                                       jitter=self._rng.random())
                log = _log.warning if failures == 1 or failures % 20 == 0 else _log.debug
                log("registration.failed", service=self.service, instance=self.instance,
                    error=str(exc), failures=failures, retry_in_s=round(wait, 3))
                if exc.code == 5 and self._lease is not None:  # lease not found: expired
                    self._lease_lost()
            self._wake.wait(wait)
            self._wake.clear()

    def _register(self) -> None:
        lease, granted = self._client.grant(self.ttl)
        try:
            self._client.put(self.key, self._value, lease=lease)
        except EtcdError:
            with contextlib.suppress(EtcdError):
                self._client.revoke(lease)
            raise
        with self._state:
            stopped = self._stopped
            if not stopped:
                self._lease = lease
                self._registered = True
        if stopped:  # deregistered while we were registering: take it back at once
            self._client.revoke(lease)
            return
        _log.info("registration.added", service=self.service, instance=self.instance,
                  url=self.url, key=self.key, ttl_s=granted)

    def _withdraw(self) -> None:
        with self._state:
            lease, self._lease = self._lease, None
            self._registered = False
        if lease is not None:
            self._client.revoke(lease)
            _log.info("registration.removed", service=self.service, instance=self.instance,
                      url=self.url, reason="not ready")

    def _lease_lost(self) -> None:
        with self._state:
            if self._lease is None:
                return
            self._lease = None
            self._registered = False
        _log.warning("registration.lease_lost", service=self.service, instance=self.instance,
                     action="registering again")
