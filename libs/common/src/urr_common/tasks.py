"""Helpers for long-running asyncio tasks (the services' background loops)."""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` when the current task has a cancellation pending.

    A background loop that catches ``Exception`` to survive a broker or Redis failure must
    still stop when it is cancelled. Its cancellation can be lost below it: a driver that
    catches the ``CancelledError`` on its way and raises its own connection error instead
    (aiokafka's bootstrap reports "Unable to bootstrap" for a cancelled connect), which the
    loop then treats as one more failure and goes round again, for ever, while whoever
    cancelled it waits. ``Task.cancelling()`` still counts the request (only the code that
    handles a cancel on purpose calls ``uncancel()``), so a loop calls this once a round.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
