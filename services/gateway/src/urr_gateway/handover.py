"""Handing something freed to the oldest caller still waiting for it (first come, first
served): the upstream pool's connections and the limiter's in-flight slots."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TypeVar

T = TypeVar("T")


def hand_to_oldest(waiters: deque[asyncio.Future[T]], value: T) -> bool:
    """Resolve the oldest waiter not yet done (cancelled or timed-out ones are dropped) with
    ``value``; ``False`` when nobody waits any more."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(value)
            return True
    return False
