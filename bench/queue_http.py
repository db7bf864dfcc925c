"""Queue benchmark over HTTP: enter and status with 1,000,000 users waiting in one event.

Run: ``uv run python bench/queue_http.py [--waiting 1000000] [--seconds 15] [--concurrency 32]``.
Starts a private redis-server and the queue service (``python -m urr_queue``, admission loop
on, Kafka off) on free loopback ports, bulk-loads the queue, then drives it with an aiohttp
client for a bounded time per phase and prints throughput and latency percentiles:

* ``status`` by users already waiting (random places in the 1,000,000);
* ``enter`` by new users (each joins at the back).

The load generator shares the machine with the service, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import aiohttp
from queue_common import bulk_enter, describe_ms, uuid_users, workdir
from redis.asyncio import Redis

from urr_common.identity import ASSERTION_HEADER
from urr_common.identity_testing import identity_env, mint
from urr_devstack.procs import RedisServer, ServerProcess, free_port
from urr_queue.config import EventConfig
from urr_queue.store import QueueStore

EVENT = "bench"


def asserted(user_id: str, method: str, path: str) -> dict[str, str]:
    """The gateway's signed identity for one request (signing is part of the client's cost)."""
    return {ASSERTION_HEADER: mint(user_id, "user", audience="queue", method=method, path=path)}


async def drive(
    name: str,
    seconds: float,
    concurrency: int,
    call: Callable[[aiohttp.ClientSession, int], Awaitable[int]],
) -> None:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                status = await call(session, next(counter))
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    print(
        f"{name}: {len(latencies) / elapsed:,.0f} req/s over {elapsed:.1f}s, "
        f"{describe_ms(latencies)}, statuses {dict(statuses)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    folder = workdir("http")
    redis_server = RedisServer(port=free_port(), workdir=folder / "redis")
    redis_server.start()
    redis = Redis.from_url(redis_server.url)
    service: ServerProcess | None = None
    try:
        store = QueueStore(redis, heartbeat_bucket_ms=5_000)
        config = EventConfig(
            capacity=100, admit_per_second=10, session_seconds=3_600, idle_timeout_seconds=600
        )
        await store.configure(EVENT, config)
        started = time.monotonic()
        users = uuid_users(args.waiting)
        await bulk_enter(redis, EVENT, [u.bytes for u in users])
        print(f"bulk-loaded {args.waiting:,} waiting users in {time.monotonic() - started:.1f}s")

        port = free_port()
        env = {
            "URR_REDIS__URL": redis_server.url,
            "URR_HTTP__PORT": str(port),
            "URR_QUEUE_EVENTS__ENABLED": "false",
            "URR_RESERVATION_EVENTS__ENABLED": "false",
            "URR_ENTRY_TOKENS__PRIVATE_KEY_FILE": str(folder / "entry" / "local-1.pem"),
            "URR_VWR_TRUST__PUBLIC_KEY_FILES": "[]",
            "URR_LOG__LEVEL": "WARNING",
            # The gateway's signed identity (a test key): the queue believes nothing else.
            **identity_env(),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
        service = ServerProcess(
            "urr-queue", [sys.executable, "-m", "urr_queue"], port, folder / "queue.log", env=env
        )
        service.start()
        path = f"/api/v1/queue/{EVENT}"
        base = f"http://127.0.0.1:{port}{path}"
        sample = [str(u) for u in random.sample(users, 50_000)]

        async def status(session: aiohttp.ClientSession, n: int) -> int:
            headers = asserted(sample[n % len(sample)], "GET", f"{path}/status")
            async with session.get(f"{base}/status", headers=headers) as response:
                await response.read()
                return response.status

        async def enter(session: aiohttp.ClientSession, n: int) -> int:
            headers = asserted(f"bench-new-{n}", "POST", f"{path}/enter")
            async with session.post(f"{base}/enter", headers=headers) as response:
                await response.read()
                return response.status

        async def live(session: aiohttp.ClientSession, n: int) -> int:
            async with session.get(f"http://127.0.0.1:{port}/health/live") as response:
                await response.read()
                return response.status

        # Baseline: the same client and server with no queue work (what the machine allows).
        await drive("baseline /health/live", min(5.0, args.seconds), args.concurrency, live)
        await drive("warm-up status", 2, args.concurrency, status)
        await drive(f"status ({args.waiting:,} waiting)", args.seconds, args.concurrency, status)
        await drive(f"enter ({args.waiting:,} waiting)", args.seconds, args.concurrency, enter)
        print(f"queue size after: {await redis.zcard('{' + EVENT + '}:queue'):,}")
    finally:
        if service is not None:
            service.stop()
        await redis.aclose()
        redis_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
