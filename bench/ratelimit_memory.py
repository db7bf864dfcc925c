"""Bytes per rate-limit key in Redis, measured with MEMORY USAGE.

Run manually: ``uv run python bench/ratelimit_memory.py``. Starts a private redis-server,
fills one subject's sliding log with N admitted requests through the real limiter for several
N (the contract's limits 10, 20, 60 and 100, the listpack boundary at 128/129 entries, and
1000 to show the cliff), and prints MEMORY USAGE (SAMPLES 0: exact) and the encoding. Also
the per-subject total for the four default categories at their full limits, and the used
memory of 10,000 subjects that each made one request (the common case).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_devstack.procs import RedisServer, free_port
from urr_gateway.ratelimit import (
    CategoryLimits,
    RateLimitSettings,
    SlidingWindowLimiter,
    WindowLimit,
    window_key,
)

FILLS = (1, 10, 20, 60, 100, 128, 129, 1000)


async def usage(redis: Redis, key: str) -> tuple[int, str]:
    size = await redis.memory_usage(key, samples=0)
    encoding = await redis.object("ENCODING", key)
    return int(size or 0), (encoding or b"").decode()


async def main() -> None:
    server = RedisServer(port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="urr-bench-")))
    server.start()
    redis = Redis.from_url(server.url)
    try:
        categories = {"probe": CategoryLimits(windows=(WindowLimit(limit=10_000, window_s=3600),))}
        limiter = SlidingWindowLimiter(
            redis,
            RateLimitSettings(
                categories=categories, routes=(), default_category="probe", budget_ms=1000
            ),
            registry=CollectorRegistry(),
        )
        print(f"{'entries':>8} {'bytes':>8} {'bytes/entry':>12}  encoding   (subject u:1234567)")
        for fill in FILLS:
            subject = f"u:{1234567 + fill}"
            for _ in range(fill):
                await limiter.check(subject, "probe")
            size, encoding = await usage(redis, window_key(subject, "probe", 3600))
            print(f"{fill:8d} {size:8d} {size / fill:12.1f}  {encoding}")

        defaults = SlidingWindowLimiter(
            redis, RateLimitSettings(budget_ms=1000), registry=CollectorRegistry()
        )
        total = 0
        for category, limit in (("auth", 20), ("queue", 60), ("booking", 10), ("general", 100)):
            for _ in range(limit):
                await defaults.check("u:7654321", category)
            size, _ = await usage(redis, window_key("u:7654321", category, 60))
            total += size
        print(f"one user at the full default limits of all four categories: {total} bytes")

        await redis.flushall()
        before = int((await redis.info("memory"))["used_memory"])
        for n in range(10_000):
            await defaults.check(f"ip:10.{n // 256}.{n % 256}.1", "general")
        after = int((await redis.info("memory"))["used_memory"])
        print(
            f"10,000 subjects with one request each: {(after - before) / 10_000:.0f} bytes/subject"
        )
    finally:
        await redis.aclose()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
