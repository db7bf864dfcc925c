"""The limiter's start-up and shutdown on an application's ``cleanup_ctx``.

An async generator, which mypyc cannot compile: it lives here, never compiled, so that
``filters.ratelimit`` (on every request's path) can be.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from urr_common.logs import get_logger
from urr_common.tasks import CLOSE_STEP_S, bounded_step
from urr_gateway.ratelimit.limiter import SlidingWindowLimiter

#: The filter's logger: what shutdown logs keeps the name it had in ``filters.ratelimit``.
_LOG = get_logger("urr_gateway.filters.ratelimit")


def limiter_lifecycle(
    limiter: SlidingWindowLimiter,
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Load the script (and open a connection) at start-up, flush the usage tally every
    ``usage_flush_s``, and at shutdown flush it once more and close the limiter, each step
    bounded."""

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(limiter.settings.usage_flush_s)
            await limiter.flush_usage()

    async def run(_: web.Application) -> AsyncIterator[None]:
        await limiter.prepare()
        flusher = asyncio.create_task(flush_periodically())
        yield
        flusher.cancel()
        # Each step bounded: a Redis that does not answer at shutdown must not hold it up.
        await bounded_step("usage_flusher", asyncio.wait({flusher}), CLOSE_STEP_S, _LOG)
        # What the last interval counted is not left behind.
        await bounded_step("usage_flush", limiter.flush_usage(), CLOSE_STEP_S, _LOG)
        await bounded_step("limiter", limiter.aclose(), CLOSE_STEP_S, _LOG)

    return run
