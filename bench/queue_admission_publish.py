"""What publishing the ``admitted`` record adds to a Tier-2 admission (issue 19's log feed).

The admission log is fed by the ``admitted`` records the queue's admission loop publishes to
``queue-events`` (``AdmissionLoop._report`` -> ``QueueEventPublisher``). Side by side in one
run, on a private redis-server and a private Tansu broker, the same ticks (``--per-tick``
admissions each, ``--ticks`` ticks per mode, a fresh event per mode with every waiter's
heartbeat current):

- ``tick only``: ``QueueStore.tick`` alone, the Redis script that admits (no record at all);
- ``tick + records, Kafka off``: ``AdmissionLoop.tick`` with ``queue_events.enabled=false``
  (the records are built and reported, then dropped by the publisher);
- ``tick + publish to Kafka``: ``AdmissionLoop.tick`` with the real aiokafka producer
  draining the buffer to Tansu in the background, as the service ran before the outbox (a
  record could be dropped); the CPU window ends when every record is acknowledged, so the
  drain's encoding and sends are counted.
- ``tick + outbox write``: ``QueueStore.tick`` writing each record into the event's outbox
  stream inside the admitting script (the outbox's cost alone, no relay);
- ``tick + outbox + relay``: ``AdmissionLoop.tick`` with the outbox and the ``OutboxRelay``
  running beside it as the service runs now: the window ends when the outbox is empty again
  (every record acknowledged by Tansu, then deleted from Redis).

Prints, per mode, the tick's wall time (P50/P99), the queue process's CPU per admission
(``time.process_time``) with the difference to ``tick only``, and redis-server's CPU per
admission (``INFO cpu``, user + sys): the outbox's XADD, XRANGE and XDEL run there.

    uv run --frozen python bench/queue_admission_publish.py [--ticks 200] [--per-tick 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry
from queue_common import bulk_enter, percentile, workdir
from redis.asyncio import Redis

from urr_common.clients import open_kafka_producer
from urr_common.settings import KafkaSettings
from urr_devstack.procs import RedisServer, free_port, tansu_server
from urr_queue.admission import AdmissionLoop
from urr_queue.config import EventConfig
from urr_queue.events import ProducerFactory, QueueEventPublisher
from urr_queue.keys import event_keys
from urr_queue.metrics import QueueMetrics
from urr_queue.outbox import OutboxRelay
from urr_queue.settings import AdmissionSettings, OutboxSettings
from urr_ticket_worker.testing import create_topics

TOPIC = "queue-events"
CONFIG = EventConfig(
    capacity=1_000_000, admit_per_second=100_000, session_seconds=3_600, idle_timeout_seconds=600
)


class Mode:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tick_s: list[float] = []
        self.cpu_s = 0.0
        self.redis_cpu_s = 0.0
        self.admitted = 0

    def cpu_us_per_admission(self) -> float:
        return self.cpu_s / max(1, self.admitted) * 1e6

    def redis_us_per_admission(self) -> float:
        return self.redis_cpu_s / max(1, self.admitted) * 1e6


async def redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def run_mode(
    mode: Mode,
    redis: Redis,
    loop: AdmissionLoop,
    tick: Callable[[str], Awaitable[int]],
    ticks: int,
    per_tick: int,
    drain: Callable[[str], Awaitable[None]] | None,
) -> None:
    event_id = f"pub-{uuid.uuid4().hex[:8]}"
    await loop.store.configure(event_id, CONFIG)
    await bulk_enter(redis, event_id, [uuid.uuid4().bytes for _ in range(ticks * per_tick)])
    await asyncio.sleep(0.05)  # the rate bucket fills
    cpu0, redis0 = time.process_time(), await redis_cpu_s(redis)
    for _ in range(ticks):
        started = time.perf_counter()
        mode.admitted += await tick(event_id)
        mode.tick_s.append(time.perf_counter() - started)
        await asyncio.sleep(0)  # the loop yields between ticks; the drain task runs here
    if drain is not None:
        await drain(event_id)
    mode.cpu_s = time.process_time() - cpu0
    mode.redis_cpu_s = await redis_cpu_s(redis) - redis0


def describe(mode: Mode, baseline: Mode | None) -> str:
    ms = [t * 1000 for t in mode.tick_s]
    added = ""
    if baseline is not None:
        added = f"  (+{mode.cpu_us_per_admission() - baseline.cpu_us_per_admission():.1f})"
    return (
        f"{mode.name:<28} {mode.admitted:>7,} {statistics.median(ms):>8.2f}"
        f" {percentile(ms, 0.99):>8.2f} {mode.cpu_us_per_admission():>10.1f}{added:<9}"
        f" {mode.redis_us_per_admission():>10.1f}"
    )


async def until_relayed(redis: Redis, event_id: str) -> None:
    """Until the relay emptied the event's outbox (every record acknowledged, then deleted)."""
    outbox = event_keys(event_id).outbox
    deadline = time.monotonic() + 120
    while await redis.xlen(outbox) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def measure(args: argparse.Namespace, redis_url: str, bootstrap: str) -> list[Mode]:
    redis: Redis = Redis.from_url(redis_url)
    settings = AdmissionSettings(max_admit_per_tick=args.per_tick, max_scan_per_tick=args.per_tick)
    kafka = KafkaSettings(bootstrap_servers=bootstrap)

    def loop_with(factory: ProducerFactory | None, outbox_cap: int = 0) -> AdmissionLoop:
        from urr_queue.store import QueueStore

        metrics = QueueMetrics.register(CollectorRegistry())
        publisher = QueueEventPublisher(
            TOPIC, buffer_size=args.ticks * args.per_tick, metrics=metrics, producer_factory=factory
        )
        return AdmissionLoop(QueueStore(redis), publisher, metrics, settings, outbox_cap=outbox_cap)

    async def bare_tick(loop: AdmissionLoop, event_id: str) -> int:
        result = await loop.store.tick(
            event_id,
            max_admit=settings.max_admit_per_tick,
            max_scan=settings.max_scan_per_tick,
            max_expire=settings.max_expire_per_tick,
            order_grace_ms=round(settings.tier1_order_grace_s * 1000),
            outbox_cap=loop.outbox_cap,
        )
        assert result is not None
        return len(result.admitted)

    async def loop_tick(loop: AdmissionLoop, event_id: str) -> int:
        result = await loop.tick(event_id)
        assert result is not None
        return len(result.admitted)

    modes: list[Mode] = []
    try:
        for repeat in range(args.repeats):
            off = loop_with(None)
            on = loop_with(lambda: open_kafka_producer(kafka))
            sender = asyncio.create_task(on.publisher.run())
            # The publisher says when its producer is up only through this flag.
            while not on.publisher._connected:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

            async def drained(_: str, publisher: QueueEventPublisher = on.publisher) -> None:
                await publisher.drain(120.0)

            outboxed = loop_with(None, outbox_cap=OutboxSettings().max_len)
            relayed = loop_with(None, outbox_cap=OutboxSettings().max_len)
            relay = OutboxRelay(
                redis,
                topic=TOPIC,
                settings=OutboxSettings(),
                metrics=relayed.metrics,
                producer_factory=lambda: open_kafka_producer(kafka),
            )
            relay_task = asyncio.create_task(relay.run())

            relayed_all = partial(until_relayed, redis)
            runs = [
                (Mode("tick only"), off, bare_tick, None),
                (Mode("tick + records, Kafka off"), off, loop_tick, None),
                (Mode("tick + publish to Kafka"), on, loop_tick, drained),
                (Mode("tick + outbox write"), outboxed, bare_tick, None),
                (Mode("tick + outbox + relay"), relayed, loop_tick, relayed_all),
            ]
            for mode, loop, tick, drain in runs:
                await run_mode(
                    mode,
                    redis,
                    loop,
                    lambda e, t=tick, lp=loop: t(lp, e),  # type: ignore[misc]
                    args.ticks,
                    args.per_tick,
                    drain,
                )
                mode.name += f" #{repeat + 1}"
                modes.append(mode)
            # After the CPU windows: the emptied streams would stay as keys otherwise.
            await redis.delete(*(event_keys(e).outbox for e in await relay.event_ids()))
            published = on.publisher.metrics.events_published._value.get()
            if published < args.ticks * args.per_tick:
                raise SystemExit(f"only {published} records reached Kafka")
            relayed_count = relayed.metrics.outbox_relayed._value.get()
            if relayed_count < args.ticks * args.per_tick:
                raise SystemExit(f"only {relayed_count} outbox records reached Kafka")
            for task in (sender, relay_task):
                task.cancel()
            await asyncio.gather(sender, relay_task, return_exceptions=True)
    finally:
        await redis.aclose()
    return modes


async def main(args: argparse.Namespace) -> None:
    base: Path = workdir("queue_admission_publish")
    redis = RedisServer(port=free_port(), workdir=base / "redis")
    broker = tansu_server(free_port(), base / "tansu.log")
    for server in (redis, broker):
        server.start()
    try:
        bootstrap = f"127.0.0.1:{broker.port}"
        await asyncio.to_thread(create_topics, bootstrap, [TOPIC])
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        modes = await measure(args, redis.url, bootstrap)
    finally:
        for server in (broker, redis):
            server.stop()
    print(
        f"{'mode':<28} {'admits':>7} {'P50 ms':>8} {'P99 ms':>8} {'CPU µs/adm':>10}"
        f" {'(+ vs tick)':<9} {'Redis µs/adm':>10}"
    )
    baseline = None
    for mode in modes:
        if mode.name.startswith("tick only"):
            baseline = mode
        print(describe(mode, None if mode is baseline else baseline))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=200)
    parser.add_argument("--per-tick", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
