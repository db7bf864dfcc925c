"""Read deadlines of upstream answers, expired by one coarse sweep instead of a timer each.

Every wait for an upstream's bytes used to arm a loop timer (``call_later``) and cancel it
when the bytes came: under uvloop that is a timer handle and a libuv timer started and
stopped per wait, two or more per request, for a deadline that almost never fires. Here a
wait only records its deadline in an insertion-ordered dict; one timer per pool, armed only while
anything waits, fails the waits whose deadline has passed every ``SWEEP_S``. A silent
upstream is therefore cut between its deadline and ``SWEEP_S`` after it (the timeouts are
seconds; the sweep is a twentieth of one), never earlier.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

#: How late past its deadline a silent upstream may be noticed.
SWEEP_S = 0.05


class Expiring(Protocol):
    """A wait with a deadline (loop time) that can be failed."""

    deadline: float

    def expire(self) -> None: ...


class ReadDeadlines:
    """The waits of one event loop's upstream answers, and the sweep that expires them."""

    __slots__ = ("_sweep_handle", "_waiting", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: dict[Expiring, None] = {}
        self._sweep_handle: asyncio.TimerHandle | asyncio.Handle | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def watch(self, wait: Expiring, timeout_s: float) -> None:
        """Fail ``wait`` once ``timeout_s`` pass without ``forget``."""
        wait.deadline = self.loop.time() + timeout_s
        self._waiting[wait] = None
        if self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(SWEEP_S, self._sweep)

    def forget(self, wait: Expiring) -> None:
        self._waiting.pop(wait, None)

    def _sweep(self) -> None:
        self._sweep_handle = None
        now = self.loop.time()
        expired = [wait for wait in self._waiting if wait.deadline <= now]
        for wait in expired:
            del self._waiting[wait]
            wait.expire()
        if self._waiting:
            self._sweep_handle = self.loop.call_later(SWEEP_S, self._sweep)
