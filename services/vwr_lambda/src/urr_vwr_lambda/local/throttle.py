"""API Gateway's stage throttle in the emulator, shared by its two listeners (aiohttp's
server in ``apigw``, its own in ``apigw_server``): pending calls counted apart for reads and
writes, a 429 problem with ``Retry-After`` past the limit, and the call through it.

A module of its own so both listeners hold the same ``INVOKER_KEY`` even when ``apigw`` runs
as ``__main__`` (``python -m urr_vwr_lambda.local.apigw``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from urr_vwr_lambda.problem import PROBLEM_CONTENT_TYPE, problem_body
from urr_vwr_lambda.settings import VwrSettings

#: Seconds a throttled caller is asked to wait (the waiting page adds its own jitter).
THROTTLE_RETRY_AFTER_S = 2


@dataclass
class Pending:
    """Invocations running or waiting for a worker (turned-away ones are a metric)."""

    limit: int
    count: int = 0

    def full(self) -> bool:
        return self.count >= self.limit


#: The methods counted as reads (``local_api_max_pending_reads``).
READS = frozenset({"GET", "HEAD"})


Run = Callable[[dict[str, Any], str | None, bool], Awaitable[dict[str, Any]]]


@dataclass
class Invoker:
    """What both listeners call the function through, with API Gateway's throttle: at most
    ``writes.limit`` writes and ``reads.limit`` reads pending at once."""

    writes: Pending
    reads: Pending
    throttled_total: Counter
    run: Run

    def pending(self, read: bool) -> Pending:
        return self.reads if read else self.writes

    def turned_away(self, read: bool) -> bool:
        """Whether a call must be throttled now (counted as such)."""
        if (self.reads if read else self.writes).full():
            self.throttled_total.inc()
            return True
        return False

    async def call(self, event: dict[str, Any], key: str | None, read: bool) -> dict[str, Any]:
        """One invocation of the function, counted as pending while it waits and runs."""
        pending = self.reads if read else self.writes
        pending.count += 1
        try:
            return await self.run(event, key, read)
        finally:
            pending.count -= 1


def make_invoker(settings: VwrSettings, registry: CollectorRegistry, run: Run) -> Invoker:
    return Invoker(
        writes=Pending(limit=settings.local_api_max_pending),
        reads=Pending(limit=settings.local_api_max_pending_reads),
        throttled_total=Counter(
            "urr_vwr_apigw_throttled",
            "Requests the API Gateway emulator turned away with 429 (too many pending)",
            registry=registry,
        ),
        run=run,
    )


INVOKER_KEY = web.AppKey("vwr_api_invoker", Invoker)


def throttled() -> web.Response:
    """API Gateway's answer to a caller over the stage's throttle, as a problem."""
    body = problem_body(429, "throttled", "the waiting room is busy; try again shortly")
    return web.Response(
        status=429,
        text=json.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers={"Retry-After": str(THROTTLE_RETRY_AFTER_S), "Cache-Control": "no-store"},
    )
