"""Restart policy for crashed replicas (pure: the caller passes the time)."""

from __future__ import annotations

from dataclasses import dataclass, field

from shoal._backoff import exponential


@dataclass
class RestartBackoff:
    """Exponential restart delay that resets once a replica has stayed up for a while.

    ``delay(now)`` is called when the replica exited: ``base``, then times ``factor`` per crash, up
    to ``maximum``. A replica that ran at least ``reset_after`` seconds starts over at
    ``base``. ``crash_looping`` is true when ``loop_crashes`` crashes fell within
    ``loop_window`` seconds: the state ``shoal ps`` shows as ``crash-loop``.
    """

    base: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    reset_after: float = 60.0
    loop_crashes: int = 3
    loop_window: float = 60.0
    _attempt: int = 0
    _started: float | None = None
    _crashes: list[float] = field(default_factory=list)

    def started(self, now: float) -> None:
        self._started = now

    def delay(self, now: float) -> float:
        if self._started is not None and now - self._started >= self.reset_after:
            self._attempt = 0
        delay = exponential(self._attempt, base=self.base, cap=self.maximum, factor=self.factor)
        self._attempt += 1
        self._crashes = [t for t in self._crashes if now - t < self.loop_window] + [now]
        return delay

    @property
    def crash_looping(self) -> bool:
        return len(self._crashes) >= self.loop_crashes
