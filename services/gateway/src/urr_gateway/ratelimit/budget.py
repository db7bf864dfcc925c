"""The Redis time budget, measured so that a busy event loop is not taken for a slow Redis.

(:class:`RedisBudget` times one call, for the per-call transport; :class:`BatchDeadline`
times a pipelined batch and asks the socket itself whether Redis has answered.)

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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from urr_common.resp import Waiter

T = TypeVar("T")

#: A timer this late means the loop, not Redis, held things up.
LATE_S = 0.002

#: The loop's timer resolution: uvloop rounds a delay to whole milliseconds, so a timer may
#: fire up to half of one before its deadline. A batch due within this is judged now: re-armed
#: for the rest, the timer would round it to 0 ms and spin the loop until the clock moved.
TIMER_RESOLUTION_S = 0.001

#: How soon a batch whose replies sit unread in the socket is judged again.
RECHECK_S = 0.001


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
    """The same budget for the batches of calls written together on one connection (the
    pipelined store), with one timer for all of them: each future of a batch (``watch``)
    still pending ``budget_s`` after the batch was written fails with ``TimeoutError``.

    The budget is Redis's own latency: it starts at the write (time queued behind a busy
    loop before it is not Redis's), and when it runs out the socket is asked whether Redis
    has sent anything the loop has not read yet (``unread``). If so, the loop, not Redis, is
    behind: the judgement waits for the loop to read it (a re-check every millisecond, each
    after a poll of the sockets) and nothing fails. Only a batch whose replies have not
    *arrived* within the budget fails, so an overloaded process with a healthy Redis never
    opens the breaker or fails a decision open (``tests/test_ratelimit_overload.py``).

    One timer per connection, not per batch: a timer armed and cancelled for every batch
    (and the done-callback that cancelled it) was ~10 % of the check API's per-request
    Python at one decision per batch. Replies come in order, so batches are judged in the
    order they were written: the timer is armed at the oldest unsettled batch's deadline,
    and when it fires, settled batches are dropped, an overdue one is judged, and it is
    re-armed for the next (none left: no timer). While decisions keep coming, that is one
    wake-up per budget (10 ms), not one timer per batch. A batch held by a gathering window
    (``held_s``) may have an earlier deadline than one written before it: it is judged after
    that one, at most the window's hold (1 ms) late.
    """

    __slots__ = ("_batches", "_budget", "_handle", "_loop", "_unread")

    def __init__(
        self,
        budget: RedisBudget,
        unread: Callable[[], bool],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._budget = budget
        self._unread = unread
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        #: (deadline in loop time, the batch's futures), in write order.
        self._batches: deque[tuple[float, list[Waiter]]] = deque()
        self._handle: asyncio.Handle | None = None

    def armed(self) -> bool:
        """Is a judgement pending (a batch not yet settled or judged)?"""
        return self._handle is not None

    def watch(self, futures: list[Waiter], *, held_s: float = 0.0) -> None:
        """Time the batch just written. ``held_s``: how long it waited to be written (a
        gathering window), spent from its budget already."""
        due = self._loop.time() + max(self._budget.budget_s - held_s, 0.0)
        self._batches.append((due, futures))
        if self._handle is None:
            self._handle = self._loop.call_at(due, self._judge)

    def _judge(self) -> None:
        self._handle = None
        batches = self._batches
        now = self._loop.time()
        while batches:
            due, futures = batches[0]
            if all(future.done() for future in futures):
                batches.popleft()
                continue
            if due - now >= TIMER_RESOLUTION_S:
                self._handle = self._loop.call_at(due, self._judge)
                return
            if self._unread():
                # Replies (ours or earlier ones, sent in order) are waiting in the socket.
                # call_later, not call_at(now): libuv could run a timer due now in the same
                # timer pass, before any poll, and spin here.
                self._budget.extensions += 1
                self._handle = self._loop.call_later(RECHECK_S, self._judge)
                return
            batches.popleft()
            budget_ms = self._budget.budget_s * 1000
            for future in futures:
                if not future.done():
                    future.set_exception(
                        TimeoutError(f"no reply from Redis within {budget_ms:g} ms")
                    )
