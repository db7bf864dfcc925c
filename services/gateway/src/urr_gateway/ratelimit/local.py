"""The in-process fallback: the same sliding log, kept in this process's memory.

Used for categories whose failure policy is ``local`` while Redis is unusable. Each process
counts only what it sees, so with N gateway processes a subject may get up to N times the
limit during an outage: a limit per process rather than none (Kong's rate-limiting-advanced
degrades the same way). Memory is bounded: the least recently seen subjects are dropped.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from urr_gateway.ratelimit.window import (
    US_PER_S,
    Decision,
    WindowOutcome,
    WindowSpec,
    decide,
    evaluate_window,
)


class LocalSlidingLog:
    def __init__(self, max_subjects: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_subjects = max_subjects
        self._clock = clock
        self._logs: OrderedDict[tuple[str, str], tuple[deque[int], ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._logs)

    def check(
        self, subject: str, category: str, specs: tuple[WindowSpec, ...], cost: int
    ) -> Decision:
        now_us = round(self._clock() * US_PER_S)
        key = (subject, category)
        logs = self._logs.get(key)
        if logs is None:
            logs = tuple(deque() for _ in specs)
            self._logs[key] = logs
            while len(self._logs) > self._max_subjects:
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(key)
        outcomes: list[WindowOutcome] = []
        for spec, log in zip(specs, logs, strict=True):
            horizon = now_us - spec.window_us
            while log and log[0] <= horizon:
                log.popleft()
            outcomes.append(evaluate_window(log, now_us, spec.limit, spec.window_us, cost))
        decision = decide(category, specs, outcomes, cost, source="local", degraded=True)
        if decision.allowed:
            for log in logs:
                log.extend([now_us] * cost)
        return decision
