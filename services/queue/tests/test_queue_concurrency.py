"""Three admission loops at once over 10,000 waiters: capacity holds, nobody twice."""

from __future__ import annotations

import asyncio
from collections import Counter

from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from urr_common.clients import redis_client
from urr_common.settings import RedisSettings
from urr_queue.admission import AdmissionLoop
from urr_queue.config import EventConfig
from urr_queue.events import QueueEventPublisher
from urr_queue.keys import event_keys
from urr_queue.metrics import QueueMetrics
from urr_queue.settings import AdmissionSettings
from urr_queue.store import QueueStore

EVENT = "rush"
WAITERS = 10_000
CAPACITY = 400


async def _fill(store: QueueStore, count: int) -> None:
    """Enter ``count`` users through the real enter script, pipelined.

    Cluster clients refuse pipelined scripts, so on a cluster the pipeline goes straight to
    the node that owns the event's slot (all of its keys share one hash tag).
    """
    keys = event_keys(EVENT)
    await store.visit(EVENT, "user-0", enter=True)  # loads the script where the event lives
    target: Redis = store.redis  # type: ignore[assignment]
    if isinstance(store.redis, RedisCluster):
        node = store.redis.get_node_from_key(keys.queue)
        assert node is not None
        target = Redis(host=node.host, port=int(node.port))
    try:
        for start in range(1, count, 1_000):
            async with target.pipeline(transaction=False) as pipe:
                for n in range(start, min(count, start + 1_000)):
                    args = [keys.seen_prefix, f"user-{n}", "", "", "1"]
                    pipe.evalsha(store._visit.sha, len(keys.as_list()), *keys.as_list(), *args)
                await pipe.execute()
    finally:
        if target is not store.redis:
            await target.aclose()


class Rush:
    """Three admission loops, a booking backend ending sessions, and a capacity watcher."""

    def __init__(self, stores: list[QueueStore]) -> None:
        settings = AdmissionSettings(tick_interval_s=0.01, max_admit_per_tick=150)
        self.loops = []
        for store in stores[:3]:
            metrics = QueueMetrics.register(CollectorRegistry())
            publisher = QueueEventPublisher(
                "t", buffer_size=1, metrics=metrics, producer_factory=None
            )
            self.loops.append(AdmissionLoop(store, publisher, metrics, settings))
        self.booker, self.watcher = stores[3], stores[4]
        self.admitted: Counter[str] = Counter()
        self.tick_orders: list[list[int]] = []
        self.highest_active = 0
        self.done = asyncio.Event()

    async def drive(self, loop: AdmissionLoop) -> None:
        while not self.done.is_set():
            for result in await loop.tick_all():
                self.highest_active = max(self.highest_active, result.active)
                self.admitted.update(user for user, _ in result.admitted)
                self.tick_orders.append([number for _, number in result.admitted])
            await asyncio.sleep(0)

    async def book(self) -> None:
        # Plays the booking backend: every admitted session ends soon after it starts.
        active_key = event_keys(EVENT).active
        while not self.done.is_set():
            members = await self.booker.redis.zrange(active_key, 0, -1)
            if members:
                await self.booker.redis.zrem(active_key, *members)
            elif self.admitted.total() >= WAITERS:
                self.done.set()
            await asyncio.sleep(0.002)

    async def watch(self) -> None:
        while not self.done.is_set():
            current = await self.watcher.redis.zcard(event_keys(EVENT).active)
            self.highest_active = max(self.highest_active, current)
            await asyncio.sleep(0.001)

    async def run(self, timeout_s: float) -> None:
        tasks = [asyncio.create_task(self.drive(loop)) for loop in self.loops]
        tasks += [asyncio.create_task(self.book()), asyncio.create_task(self.watch())]
        try:
            async with asyncio.timeout(timeout_s):
                await self.done.wait()
        finally:
            self.done.set()
            await asyncio.gather(*tasks)


async def test_three_loops_never_exceed_capacity_nor_admit_twice(redis_settings: RedisSettings):
    clients = [redis_client(redis_settings) for _ in range(5)]
    try:
        stores = [QueueStore(client, heartbeat_bucket_ms=500) for client in clients]
        config = EventConfig(
            capacity=CAPACITY,
            admit_per_second=100_000,
            session_seconds=300,
            idle_timeout_seconds=300,
        )
        assert await stores[0].configure(EVENT, config) == "created"
        await _fill(stores[0], WAITERS)
        assert await clients[0].zcard(event_keys(EVENT).queue) == WAITERS

        rush = Rush(stores)
        await rush.run(timeout_s=45)

        assert rush.highest_active <= CAPACITY
        assert rush.highest_active == CAPACITY, "the loops should have filled the capacity"
        assert len(rush.admitted) == WAITERS
        assert max(rush.admitted.values()) == 1, "someone was admitted twice"
        for numbers in rush.tick_orders:
            assert numbers == sorted(numbers), "a tick admitted out of order"
        assert await clients[0].zcard(event_keys(EVENT).queue) == 0
    finally:
        for client in clients:
            await client.aclose()
