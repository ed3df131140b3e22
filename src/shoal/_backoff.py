"""Exponential backoff, the one computation behind every wait-and-try-again in Shoal.

Pure: no clock, no sleeping, no randomness (a jittered delay takes its ``jitter`` draw from
the caller). The client's retries and the etcd reconnects use :func:`full_jitter`; the
supervisor's restarts, the DNS re-resolve after failures and the local registry's reconnect use
:func:`exponential` without jitter.
"""

from __future__ import annotations

#: Beyond this the exponent stops growing: ``2.0 ** 62`` is still a float, while a large
#: enough power overflows (``OverflowError``) long before any count of failures is unusual.
MAX_STEP = 62


def exponential(
    step: int, *, base: float, cap: float, factor: float = 2.0, max_step: int = MAX_STEP
) -> float:
    """``base x factor ** step``, at most ``cap`` (``step`` 0 gives ``base``).

    The exponent stops growing at ``max_step``, so the delay levels off there even when still
    below ``cap``. Non-decreasing in ``step`` for ``factor >= 1``, and never above ``cap``.
    """
    return min(cap, base * factor ** min(step, max_step))


def full_jitter(
    attempt: int, *, base: float, cap: float, jitter: float, max_step: int = MAX_STEP
) -> float:
    """Delay before try number ``attempt`` after a failure (1 for the first), given ``jitter``
    uniform in [0, 1): uniform over ``[0, min(cap, base x 2 ** (attempt - 1)))`` ("full
    jitter", so retrying clients spread out instead of arriving in waves); 0 when
    ``attempt <= 0``, before any failure."""
    if attempt <= 0:
        return 0.0
    return jitter * exponential(attempt - 1, base=base, cap=cap, max_step=max_step)
