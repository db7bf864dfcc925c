"""The Redis time budget, measured so that a busy event loop is not taken for a slow Redis.

The budget runs on the event loop. Under a burst the loop is busy with other requests, and a
reply Redis sent in 100 µs can wait unread while the budget runs out. Blaming Redis then
would open the breaker and switch every category to its failure policy exactly when a flash
crowd arrives, so a burst would pass unlimited.

So a deadline that fires *late* (the loop was busy: it could not even run the timer on time)
proves nothing about Redis: the wait is extended by another budget, and judged again, up to
``cap_s``. A deadline that fires on time gives replies already read one more loop pass, and
then expires the call: that is a Redis failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

#: A timer this late means the loop, not Redis, held things up.
LATE_S = 0.002


class RedisBudget:
    """``await budget.run(call)``: the call's result, or ``TimeoutError`` past the budget."""

    def __init__(self, budget_s: float, cap_s: float) -> None:
        self.budget_s = budget_s
        self.cap_s = max(cap_s, budget_s)
        #: How often a deadline was extended because the loop was late (for metrics/tests).
        self.extensions = 0

    async def run(self, call: Awaitable[T]) -> T:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(started + self.cap_s) as window:
            judge = _Judge(self, loop, window, started + self.budget_s)
            try:
                return await call
            finally:
                judge.finish()


class _Judge:
    """The timer of one call; re-armed while the loop runs late."""

    def __init__(
        self,
        budget: RedisBudget,
        loop: asyncio.AbstractEventLoop,
        window: asyncio.Timeout,
        due: float,
    ) -> None:
        self._budget = budget
        self._loop = loop
        self._window = window
        self._done = False
        self._handle: asyncio.Handle = loop.call_at(due, self._deadline, due)

    def finish(self) -> None:
        self._done = True
        self._handle.cancel()

    def _deadline(self, due: float) -> None:
        if self._done:
            return
        now = self._loop.time()
        if now - due > LATE_S:
            self._budget.extensions += 1
            next_due = now + self._budget.budget_s
            self._handle = self._loop.call_at(next_due, self._deadline, next_due)
        else:
            # Replies the loop has already read resume their tasks in the next pass.
            self._handle = self._loop.call_soon(self._expire)

    def _expire(self) -> None:
        if not self._done:
            self._window.reschedule(self._loop.time())


class BatchDeadline:
    """The same budget for a batch of calls that share one timer (the pipelined store):
    each future of ``futures`` still pending past the budget fails with ``TimeoutError``.
    ``futures`` may grow until the batch is written (decisions joining it in the same tick).
    The lateness rule is :class:`_Judge`'s: a timer that fires late extends the wait, up to
    the budget's cap, since a busy loop proves nothing about Redis."""

    __slots__ = ("_budget", "_futures", "_handle", "_loop", "_started")

    def __init__(self, budget: RedisBudget, futures: list[asyncio.Future[Any]]) -> None:
        self._budget = budget
        self._futures = futures
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        due = self._started + budget.budget_s
        self._handle: asyncio.Handle = self._loop.call_at(due, self._deadline, due)

    def _deadline(self, due: float) -> None:
        if all(future.done() for future in self._futures):
            return
        now = self._loop.time()
        cap = self._started + self._budget.cap_s
        if now - due > LATE_S and now < cap:
            self._budget.extensions += 1
            next_due = min(now + self._budget.budget_s, cap)
            self._handle = self._loop.call_at(next_due, self._deadline, next_due)
        else:
            # Not call_soon: uvloop (libuv) runs timers and then soon-callbacks *before* it
            # polls the sockets, so a reply already sitting in the socket would not be read
            # yet. A timer due now fires in the next pass, after this pass's poll.
            self._handle = self._loop.call_at(now, self._expire)

    def _expire(self) -> None:
        budget_ms = self._budget.budget_s * 1000
        for future in self._futures:
            if not future.done():
                future.set_exception(TimeoutError(f"no reply from Redis within {budget_ms:g} ms"))
