"""Liveness and readiness.

``/health/live`` says the process is running its event loop. ``/health/ready`` says it should
get traffic: every registered dependency check passes and the service is not draining. Once a
shutdown starts, readiness answers 503 at once so load balancers stop routing to it while
in-flight requests finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

ReadinessCheck = Callable[[], Awaitable[None]]


@dataclass
class Readiness:
    """Named dependency checks plus the draining flag; one per application."""

    check_timeout_s: float = 1.0
    draining: bool = False
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """Register ``check``: it raises (or times out) when ``name`` is unusable."""
        self.checks[name] = check

    async def evaluate(self) -> tuple[bool, dict[str, str]]:
        """Run every check concurrently; ``(ready, {name: "ok" | reason})``."""
        if self.draining:
            return False, {"shutdown": "draining"}
        names = list(self.checks)
        results = await asyncio.gather(
            *(self._run(self.checks[name]) for name in names), return_exceptions=False
        )
        report = dict(zip(names, results, strict=True))
        return all(result == "ok" for result in results), report

    async def _run(self, check: ReadinessCheck) -> str:
        try:
            async with asyncio.timeout(self.check_timeout_s):
                await check()
        except TimeoutError:
            return "timeout"
        except Exception as exc:  # a failing dependency is reported, never raised
            return f"{type(exc).__name__}: {exc}"[:200]
        return "ok"


async def _json(status: int, payload: object) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def live_handler(_: web.Request) -> web.Response:
    return await _json(200, {"status": "live"})


def ready_handler(readiness: Readiness) -> Handler:
    async def handle(_: web.Request) -> web.Response:
        ready, report = await readiness.evaluate()
        status = "ready" if ready else ("draining" if readiness.draining else "unready")
        return await _json(200 if ready else 503, {"status": status, "checks": report})

    return handle
