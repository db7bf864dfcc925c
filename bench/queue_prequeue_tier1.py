"""Cost of joining a pre-queue's roster behind a Tier-1 room, against a plain pre-queue.

Run: ``uv run python bench/queue_prequeue_tier1.py [--joins 5000]``. Starts its own
redis-server on a free loopback port; for each kind of event it enters ``--joins`` users onto
the roster through the real enter script (``visit.lua``) and prints the script's server-side
time per call (``INFO commandstats``) and the client's round trip; then it reveals the roster
and times the ticks that admit it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from datetime import UTC, datetime

from queue_common import describe_ms, workdir
from redis.asyncio import Redis

from urr_devstack.procs import RedisServer, free_port
from urr_queue import prequeue
from urr_queue.config import EventConfig
from urr_queue.store import QueueStore, Rostered

SECRET = bytes(range(32))


async def run_kind(redis: Redis, store: QueueStore, joins: int, *, tier1: bool) -> None:
    await redis.flushall()
    now_ms = await store.redis_now_ms()
    sale_ms = now_ms + 3_600_000
    config = EventConfig(
        require_tier1_token=tier1,
        capacity=1_000_000,
        admit_per_second=100_000,
        prequeue_start=datetime.fromtimestamp((now_ms - 1000) / 1000, tz=UTC),
        sale_start=datetime.fromtimestamp(sale_ms / 1000, tz=UTC),
        prequeue_commitment=hashlib.sha256(SECRET).hexdigest(),
    )
    await store.configure("bench", config, seed="ab" * 32, prequeue_salt="cd" * 32)
    await redis.config_resetstat()
    round_trips: list[float] = []
    for index in range(1, joins + 1):
        user = f"user-{index:07d}"
        started = time.perf_counter()
        answer = await store.visit(
            "bench",
            user,
            enter=True,
            tier1_position=index if tier1 else None,
            tier1_place=f"rid-{index}#{index}" if tier1 else "",
            tier1_prequeue_sale_ms=sale_ms if tier1 else None,
            tier1_issued_at=now_ms // 1000,
        )
        round_trips.append(time.perf_counter() - started)
        assert isinstance(answer, Rostered), answer
    stats = await redis.info("commandstats")
    usec = float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))
    kind = "behind Tier 1" if tier1 else "plain"
    print(
        f"roster join, {kind}: {usec:.1f} us server-side per call; "
        f"round trip {describe_ms(round_trips)}"
    )


async def main(joins: int) -> None:
    server = RedisServer(port=free_port(), workdir=workdir("prequeue-tier1"))
    server.start()
    redis = Redis.from_url(server.url)
    try:
        store = QueueStore(redis, heartbeat_bucket_ms=500)
        for tier1 in (False, True):
            await run_kind(redis, store, joins, tier1=tier1)
        # The reveal itself is the same code for both kinds (the last run is Tier-1's): time it.
        config = await store.get_config("bench")
        assert config is not None
        await redis.hset("{bench}:config", "sale_start_ms", str(await store.redis_now_ms() - 1))
        config = await store.get_config("bench")
        assert config is not None
        started = time.perf_counter()
        await prequeue.reveal(store, "bench", config, SECRET)
        print(
            f"reveal of {joins:,} members (shuffle + placing): "
            f"{time.perf_counter() - started:.2f} s"
        )
    finally:
        await redis.aclose()
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--joins", type=int, default=5000)
    asyncio.run(main(parser.parse_args().joins))
