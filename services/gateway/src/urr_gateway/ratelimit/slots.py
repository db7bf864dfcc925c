"""A bound on the limiter's calls in flight, free of cost while a slot is free.

``asyncio.Semaphore`` costs every decision a coroutine for ``acquire``, a generator over its
waiters in ``locked()`` and the async context manager's two calls, even when most of the
slots are free (the common case: the bound only matters when Redis is slow). Here a free slot
is one comparison and one decrement; only a caller that finds none waits, first come first
served, and a slot given back goes straight to the oldest waiter.
"""

from __future__ import annotations

import asyncio
from collections import deque

from urr_gateway.handover import hand_to_oldest


class InFlightSlots:
    __slots__ = ("_free", "_waiters")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("at least one call must be allowed in flight")
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody waits for one (else ``take``)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (in arrival order)."""
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed a slot just as we were cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def give_back(self) -> None:
        """Return a slot: to the oldest waiter still waiting, else to the free ones."""
        # Nobody waiting is the common case: no call then.
        waiters = self._waiters
        if not waiters or not hand_to_oldest(waiters, None):
            self._free += 1
