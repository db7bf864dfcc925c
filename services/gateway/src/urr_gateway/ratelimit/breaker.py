"""A circuit breaker in front of Redis, so an outage costs about nothing per request.

Closed: every decision asks Redis. After ``failure_threshold`` consecutive failures it opens:
decisions skip Redis (and follow their failure policy) for ``open_s``. Then it is half-open:
one decision probes Redis; success closes the breaker, failure opens it for another
``open_s``. A probe that never reports (its task was cancelled) is replaced after ``open_s``.
Time is passed in, so the state machine is tested without sleeping.
"""

from __future__ import annotations

import enum


class BreakerState(enum.IntEnum):
    #: Values are what the state gauge exports.
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_s: float) -> None:
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._since = 0.0

    def allow(self, now: float) -> bool:
        """May this decision ask Redis?"""
        if self.state is BreakerState.CLOSED:
            return True
        if now - self._since < self.open_s:
            return False
        # Open long enough, or the probe in flight has gone quiet: let one probe through.
        self.state = BreakerState.HALF_OPEN
        self._since = now
        return True

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self._since = now
