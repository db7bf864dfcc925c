"""Instructions per limiter decision, ``check`` and ``check_soon``, under callgrind.

Run manually (never part of the test run; valgrind needed; ``PYTHONPATH`` may name another
revision's ``services/gateway/src`` and ``libs/common/src`` from ``git archive``):

    CALLGRIND=1 valgrind --tool=callgrind --instr-atstart=no \\
        --callgrind-out-file=/tmp/dec.%p .venv/bin/python bench/ratelimit_decision_callgrind.py
    callgrind_annotate /tmp/dec.<pid>.1 | grep TOTALS   # check: divide by N (default 2,000)
    callgrind_annotate /tmp/dec.<pid>.2 | grep TOTALS   # check_soon: the same

A private Redis, the default pipelined limiter (budget raised to 5 s: under valgrind a reply
takes milliseconds), 400 warm-up decisions of each kind, then ``N`` decisions one after the
other (each awaited before the next: one alone in each loop pass, the worst case), subjects
rotating over 200 so every one is allowed. Counted: the decision and the event loop's work
for it (the batch's write, the reply's read), nothing of HTTP. Without ``CALLGRIND`` it only
runs (a smoke check of the script).
"""

# ruff: noqa: S603, S607 - a benchmark: callgrind_control is run on purpose

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_devstack.procs import RedisServer, free_port
from urr_gateway.ratelimit.config import RateLimitSettings
from urr_gateway.ratelimit.limiter import SlidingWindowLimiter
from urr_gateway.ratelimit.window import Decision

N = int(os.environ.get("N", "2000"))
CALLGRIND = bool(os.environ.get("CALLGRIND"))


def callgrind(*args: str) -> None:
    if CALLGRIND:
        subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True)


async def main(url: str) -> None:
    redis = Redis.from_url(url)
    settings = RateLimitSettings(budget_ms=5000)
    limiter = SlidingWindowLimiter(redis, settings, registry=CollectorRegistry())
    await limiter.prepare()
    subjects = [f"u:{index}" for index in range(200)]
    loop = asyncio.get_running_loop()

    async def checks(n: int) -> None:
        for index in range(n):
            await limiter.check(subjects[index % 200], "general")

    async def soon(n: int) -> None:
        for index in range(n):
            answered: asyncio.Future[Decision | None] = loop.create_future()

            def done(
                decision: Decision | None,
                _error: BaseException | None,
                answered: asyncio.Future[Decision | None] = answered,
            ) -> None:
                answered.set_result(decision)

            limiter.check_soon(subjects[index % 200], "queue", done)
            await answered

    await checks(400)
    await soon(400)
    gc.collect()
    gc.freeze()
    for name, run in (("check", checks), ("check_soon", soon)):
        callgrind("-z")
        callgrind("--instr=on")
        await run(N)
        callgrind("--instr=off")
        callgrind("-d")  # dump .1: check, .2: check_soon
        print(f"{name}: {N} decisions", flush=True)
    await limiter.aclose()
    await redis.aclose()


if __name__ == "__main__":
    server = RedisServer(port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="urr-dec-")))
    server.start()
    try:
        asyncio.run(main(server.url))
    finally:
        server.stop()
