"""Limiter decision benchmark: ours vs the `limits` library's moving window vs a bare PING.

Run manually (never part of the test run):

    uv run python bench/ratelimit_limiter.py [--decisions 20000] [--rounds 3]

Starts a private redis-server on a free loopback port (no persistence) unless --redis-url is
given, and measures, on the same Redis and the same redis-py (hiredis) client, in one run:

* ``ping``        a bare PING round trip: the floor for any Redis-backed decision;
* ``ours``        ``SlidingWindowLimiter.check`` (full path: deny-cache lookup, breaker,
                  budget, Lua script, decision, metrics);
* ``ours-script`` the Lua script call alone (``RedisSlidingLog.evaluate``);
* ``limits-mw``   ``limits.aio`` MovingWindowRateLimiter.hit, redis-py implementation;
* ``limits-swc``  ``limits.aio`` SlidingWindowCounterRateLimiter.hit (approximate; for scale).

Latency: one decision in flight, the contenders taking turns decision by decision (so noise
from the rest of the machine hits all alike). Throughput: 32 decisions in flight, per
contender, in rounds (median). Subjects
rotate over 10,000 keys with a 100/minute limit, so decisions are "allowed" (the common path).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_devstack.procs import RedisServer, free_port
from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter
from urr_gateway.ratelimit.store import RedisSlidingLog

KEYS = 10_000
Op = Callable[[int], Awaitable[object]]


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_concurrent(op: Op, count: int, offset: int, in_flight: int) -> float:
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            await op(offset + i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return count / (time.perf_counter() - started)


def contenders(
    redis: Redis, storage: RedisStorage, ours: SlidingWindowLimiter, store: RedisSlidingLog
) -> dict[str, Op]:
    general = ours.windows("general")
    moving = MovingWindowRateLimiter(storage)
    sliding = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerMinute(100)

    async def op_ping(_: int) -> object:
        return await redis.ping()

    async def op_ours(i: int) -> object:
        decision = await ours.check(f"ip:10.0.{i % KEYS}", "general")
        if decision.source != "redis":
            raise RuntimeError(f"not a Redis decision: {decision}")
        return decision

    async def op_script(i: int) -> object:
        return await store.evaluate(f"ip:10.1.{i % KEYS}", "general", general, 1)

    async def op_limits_mw(i: int) -> object:
        return await moving.hit(item, f"ip:10.2.{i % KEYS}")

    async def op_limits_swc(i: int) -> object:
        return await sliding.hit(item, f"ip:10.3.{i % KEYS}")

    return {
        "ping": op_ping,
        "ours": op_ours,
        "ours-script": op_script,
        "limits-mw": op_limits_mw,
        "limits-swc": op_limits_swc,
    }


async def measure(ops: dict[str, Op], args: argparse.Namespace, redis: Redis) -> None:
    for op in ops.values():  # warm up connections and scripts
        for i in range(200):
            await op(i)
    latencies: dict[str, list[float]] = {name: [] for name in ops}
    # Latency: one decision in flight, contenders taking turns decision by decision, so load
    # from the rest of the machine falls on all of them alike.
    started = time.perf_counter()
    for i in range(args.decisions):
        for name, op in ops.items():
            t0 = time.perf_counter()
            await op(i)
            latencies[name].append(time.perf_counter() - t0)
    sequential_s = time.perf_counter() - started
    # Throughput: 32 decisions in flight, contenders in turn, several rounds (median).
    conc_rates: dict[str, list[float]] = {name: [] for name in ops}
    per_round = args.decisions // args.rounds
    for round_index in range(args.rounds):
        for name, op in ops.items():
            offset = (round_index + 1) * args.decisions
            conc_rates[name].append(await run_concurrent(op, per_round, offset, 32))
    await report(latencies, conc_rates, args, redis, sequential_s)


async def main(args: argparse.Namespace) -> None:
    server: RedisServer | None = None
    url = args.redis_url
    if url is None:
        server = RedisServer(port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="urr-bench-")))
        server.start()
        url = server.url
    redis = Redis.from_url(url, max_connections=64)
    storage = RedisStorage(url.replace("redis://", "async+redis://"), implementation="redispy")
    try:
        await redis.flushall()
        # A budget no healthy call reaches even on a loaded machine: every measured decision
        # must be a Redis decision (op_ours checks), or the comparison would flatter us.
        ours = SlidingWindowLimiter(
            redis, RateLimitSettings(budget_ms=1000), registry=CollectorRegistry()
        )
        await ours.prepare()
        store = RedisSlidingLog(redis)
        await store.load()
        await measure(contenders(redis, storage, ours, store), args, redis)
    finally:
        # limits has no close(); its bridge owns a redis-py client.
        await storage.bridge.get_connection().aclose()  # type: ignore[attr-defined]
        await redis.aclose()
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


async def report(
    latencies: dict[str, list[float]],
    conc_rates: dict[str, list[float]],
    args: argparse.Namespace,
    redis: Redis,
    sequential_s: float,
) -> None:
    info = await redis.info("server")
    load = os.getloadavg()[0]
    print(
        f"redis {info['redis_version']}, {args.decisions} decisions per contender, "
        f"{args.rounds} throughput rounds, load average {load:.1f}, "
        f"sequential phase {sequential_s:.1f} s"
    )
    header = (
        f"{'contender':<12} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} "
        f"{'1-way/s':>8} {'32-way/s':>9} {'p50/ping':>9}"
    )
    print(header)
    print("-" * len(header))
    ping_p50 = statistics.median(latencies["ping"])
    for name, values in latencies.items():
        ordered = sorted(values)
        p50 = percentile(ordered, 0.50)
        print(
            f"{name:<12} {p50 * 1e6:8.0f} {percentile(ordered, 0.90) * 1e6:8.0f} "
            f"{percentile(ordered, 0.99) * 1e6:8.0f} {percentile(ordered, 0.999) * 1e6:9.0f} "
            f"{len(values) / sum(values):8.0f} {statistics.median(conc_rates[name]):9.0f} "
            f"{p50 / ping_p50:9.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    arguments = parser.parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
