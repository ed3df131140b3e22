"""A clock a test moves by hand, for the policies that take an injected clock."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that only moves when the test says so.

    Pass it wherever Shoal takes ``clock=`` (a callable returning seconds, like
    ``time.monotonic``): calling it returns :attr:`now`. :meth:`advance` moves it forward;
    a test may also assign :attr:`now` directly. It starts at 1000.0 by default, away from
    zero, so code that mistakes 0 for "never" shows up.
    """

    __slots__ = ("now",)

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward and return the new time; a monotonic clock never
        goes back, so a negative ``seconds`` raises ``ValueError``."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back, got {seconds} seconds")
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"
