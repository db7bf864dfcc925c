"""Helpers for long-running asyncio tasks (the services' background loops)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable
from typing import Any

#: What one close at shutdown (a client, a pool, a background loop) may take by default.
CLOSE_STEP_S = 2.0


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


def describe_stack(task: asyncio.Task[object], limit: int = 12) -> str:
    """Where ``task`` is waiting, for a log line (what a stuck shutdown step was doing)."""
    out = io.StringIO()
    task.print_stack(limit=limit, file=out)
    return out.getvalue()[-4000:]


async def bounded_step(step: str, awaitable: Awaitable[object], timeout_s: float, log: Any) -> bool:
    """Await one shutdown step for at most ``timeout_s``; ``True`` when it finished cleanly.

    A step that overruns is cancelled and left behind, not awaited: a driver that swallows
    its cancellation (see ``raise_if_cancelled``) would otherwise hold up every later step
    and the process's exit, until the supervisor kills it. One that fails is logged, and the
    shutdown goes on with the next step.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout_s))
    if not done:
        log.error(
            "shutdown_step_overran", step=step, timeout_s=timeout_s, stack=describe_stack(task)
        )
        task.cancel()
        return False
    if task.cancelled():
        return False
    exc = task.exception()
    if exc is not None:
        log.error("shutdown_step_failed", step=step, error=f"{type(exc).__name__}: {exc}")
        return False
    return True


async def cancel_leftovers(timeout_s: float, log: Any) -> list[asyncio.Task[object]]:
    """Cancel every other task of this loop and wait ``timeout_s`` for them; the ones still
    running then (they swallow their cancellation) are logged with their stacks and returned.

    ``asyncio.run`` would cancel them too, but then wait for them without bound.
    """
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        log.error("shutdown_task_stuck", task=task.get_name(), stack=describe_stack(task))
    return list(pending)
