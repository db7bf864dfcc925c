"""Pure arithmetic for what a waiter is told: the ETA and when to poll next.

Polling budget: the gateway's QUEUE category allows 60 requests a minute per user. A waiter
polls at most every ``MIN_POLL_S`` (30 a minute), which leaves the other half for the page's
other queue calls (enter, leave, retries) so a well-behaved page never sees a 429.
"""

from __future__ import annotations

import math

from urr_queue.config import Mode

#: Never ask for polls more often than this (half of the QUEUE rate limit of 60/min).
MIN_POLL_S = 2
#: Never ask a waiter to stay silent longer than this, however far back.
MAX_POLL_S = 30
#: The poll interval aims at this fraction of the remaining wait: often near the front,
#: rarely far back, and about four status updates on the way to the front.
POLL_FRACTION_OF_ETA = 0.25
#: Poll interval while nobody is admitted (paused, or no rate known).
UNKNOWN_ETA_POLL_S = 10


def admission_rate(
    measured: float | None,
    *,
    mode: Mode,
    capacity: int,
    admit_per_second: float,
    session_seconds: int,
) -> float | None:
    """Admissions per second to expect; ``None`` while the event admits nobody.

    The measured rate (shared by all replicas in Redis) when there is one; before any
    measurement, the steady rate the configuration allows.
    """
    if mode is Mode.PAUSED:
        return None
    if measured is not None and measured > 0:
        return measured
    return min(admit_per_second, capacity / session_seconds)


def eta_seconds(position: int, rate: float | None) -> int | None:
    """Seconds until the waiter at 1-based ``position`` is admitted, at ``rate`` per second."""
    if rate is None or rate <= 0 or position < 1:
        return None
    return math.ceil(position / rate)


def poll_after_seconds(eta: int | None, idle_timeout_seconds: int) -> int:
    """When to poll next: a quarter of the remaining wait, within the rate-limit budget.

    Capped at a third of the idle timeout so a waiter who follows the advice never loses the
    place (it takes three missed polls), and never below ``MIN_POLL_S`` (the configuration
    keeps idle timeouts at three times that or more).
    """
    wanted = UNKNOWN_ETA_POLL_S if eta is None else math.ceil(eta * POLL_FRACTION_OF_ETA)
    idle_cap = idle_timeout_seconds // 3
    return max(MIN_POLL_S, min(MAX_POLL_S, wanted, idle_cap))
