"""Queue benchmark at the Redis level: memory per waiting user and the admission tick's cost.

Run: ``uv run python bench/queue_redis.py [--waiting 1000000]``. Starts its own redis-server
on a free loopback port (nothing else is touched), loads the queue in bulk, and prints:

* Redis memory per waiting user (UUID user ids, as the auth service issues them), for the
  bulk-loaded queue and for users who entered through the real enter script;
* the admission tick's cost (server-side time per tick from ``INFO commandstats``, and the
  round trip seen by the client) at 1,000 and at 1,000,000 waiting, admitting 100 per tick
  and admitting nobody (capacity full);
* the enter and status scripts' server-side cost at that queue size.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from queue_common import bulk_enter, describe_ms, uuid_users, workdir
from redis.asyncio import Redis

from urr_devstack.procs import RedisServer, free_port
from urr_queue.config import EventConfig
from urr_queue.keys import event_keys
from urr_queue.members import encode_member
from urr_queue.store import QueueStore

ADMIT_PER_TICK = 100


async def used_memory(redis: Redis) -> int:
    """Memory holding data: ``used_memory`` without the clients' connection buffers."""
    info: dict[str, Any] = await redis.info("memory")
    return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))


async def server_usec_per_call(redis: Redis, command: str = "evalsha") -> float:
    stats: dict[str, Any] = await redis.info("commandstats")
    entry = stats.get(f"cmdstat_{command}", {})
    return float(entry.get("usec_per_call", 0.0))


async def memory_per_user(redis: Redis, store: QueueStore, count: int) -> None:
    await redis.flushall()
    await store.configure("mem", EventConfig(mode="paused"))
    before = await used_memory(redis)
    await bulk_enter(redis, "mem", [u.bytes for u in uuid_users(count)])
    bulk = (await used_memory(redis) - before) / count
    print(f"memory, bulk-loaded {count:,} UUID users: {bulk:.1f} bytes per waiting user")

    await redis.flushall()
    await store.configure("mem", EventConfig(mode="paused"))
    sample = 100_000
    before = await used_memory(redis)
    users = uuid_users(sample)
    for start in range(0, sample, 2_000):
        await asyncio.gather(
            *(store.visit("mem", str(u), enter=True) for u in users[start : start + 2_000])
        )
    real = (await used_memory(redis) - before) / sample
    print(f"memory, {sample:,} users through the enter script: {real:.1f} bytes per waiting user")
    await redis.flushall()


REFRESH_HEAD = """
local hb_ms = tonumber(redis.call('HGET', KEYS[1], 'heartbeat_ms'))
local t = redis.call('TIME')
local bucket = ARGV[1] .. math.floor((tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000) / hb_ms)
local head = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1, 'WITHSCORES')
for i = 2, #head, 2 do redis.call('SETBIT', bucket, tonumber(head[i]), 1) end
redis.call('PEXPIRE', bucket, 600000)
return #head / 2
"""


async def tick_cost(redis: Redis, store: QueueStore, waiting: int) -> None:
    """Ticks at a steady queue size: 100 new users join before each tick (not timed).

    The head of the queue polled just now (its heartbeat bits are refreshed before the
    ticks), so both sizes are measured with the same heartbeat look-ups per admission.
    """
    await redis.flushall()
    config = EventConfig(
        capacity=1_000_000,
        admit_per_second=100_000,
        session_seconds=3_600,
        idle_timeout_seconds=600,
    )
    await store.configure("tick", config)
    users = uuid_users(waiting)
    await bulk_enter(redis, "tick", [u.bytes for u in users])
    keys = event_keys("tick")
    refresh = redis.register_script(REFRESH_HEAD)

    async def run_ticks(count: int) -> tuple[list[float], float, int]:
        """Client round trips and server time (SLOWLOG logs every call) of ``count`` ticks."""
        await refresh(keys=[keys.config, keys.queue], args=[keys.seen_prefix, 20_000])
        await asyncio.sleep(0.05)  # let the rate bucket hold a tick's worth
        await redis.config_set("slowlog-log-slower-than", 0)
        await redis.config_set("slowlog-max-len", 1024)
        await redis.slowlog_reset()
        times, admitted = [], 0
        for _ in range(count):
            await bulk_enter(redis, "tick", [u.bytes for u in uuid_users(ADMIT_PER_TICK)])
            started = time.perf_counter()
            result = await store.tick(
                "tick", max_admit=ADMIT_PER_TICK, max_scan=ADMIT_PER_TICK, max_expire=2_000
            )
            times.append(time.perf_counter() - started)
            assert result is not None
            admitted += len(result.admitted)
            await asyncio.sleep(0.002)
        entries = await redis.slowlog_get(1024)
        await redis.config_set("slowlog-log-slower-than", 10_000)
        sha = store._tick.sha.encode()
        durations = [e["duration"] for e in entries if sha in bytes(e["command"])]
        return times, sum(durations) / max(1, len(durations)), admitted

    await run_ticks(5)  # warm-up
    times, server_us, admitted = await run_ticks(50)
    print(
        f"tick at {waiting:,} waiting, admitting {ADMIT_PER_TICK}/tick: server {server_us:.1f} us"
        f"/tick ({server_us / ADMIT_PER_TICK:.2f} us per admission), client {describe_ms(times)}"
        f", admitted {admitted:,}"
    )
    await store.configure("tick", config.model_copy(update={"capacity": 1}))
    times, idle_us, _ = await run_ticks(50)
    print(
        f"tick at {waiting:,} waiting, capacity full (admits 0): server {idle_us:.1f} us/tick,"
        f" client {describe_ms(times)}"
    )
    await store.configure("tick", config)
    await user_scripts(redis, store, waiting, users)


async def user_scripts(redis: Redis, store: QueueStore, waiting: int, users: list[Any]) -> None:
    """The user's scripts at this queue size (server side): status far back, and enter."""
    await redis.config_resetstat()
    back = [str(u) for u in users[-1_000:]]  # far back in the queue
    for user in back:
        await store.visit("tick", user, enter=False)
    status_us = await server_usec_per_call(redis)
    await redis.config_resetstat()
    for user in uuid_users(1_000):
        await store.visit("tick", str(user), enter=True)
    enter_us = await server_usec_per_call(redis)
    print(
        f"scripts at {waiting:,} waiting: status {status_us:.1f} us, enter {enter_us:.1f} us "
        f"(server side, per call)"
    )
    assert encode_member(back[0])  # the UUIDs above were stored in their 16-byte form


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--waiting", type=int, default=1_000_000)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    server = RedisServer(port=free_port(), workdir=workdir("redis"))
    server.start()
    redis = Redis.from_url(server.url)
    try:
        store = QueueStore(redis, heartbeat_bucket_ms=5_000)
        version = (await redis.info("server"))["redis_version"]
        allocator = (await redis.info("memory"))["mem_allocator"]
        print(f"redis {version}, allocator {allocator}")
        if not args.skip_memory:
            await memory_per_user(redis, store, args.waiting)
        for waiting in (1_000, args.waiting):
            await tick_cost(redis, store, waiting)
    finally:
        await redis.aclose()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
