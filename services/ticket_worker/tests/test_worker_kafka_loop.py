"""The consumer loop: a record whose handling fails (a dependency down) is retried, never
skipped, and offsets are committed only for what was handled."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from urr_common.settings import KafkaSettings
from urr_ticket_worker.kafka_loop import ConsumerMetrics, consume
from urr_ticket_worker.process import Heartbeat
from urr_ticket_worker.testing import create_topics

pytestmark = pytest.mark.integration


async def _topic_with(kafka_bootstrap: str, values: list[bytes]) -> str:
    topic = f"loop-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(create_topics, kafka_bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"same-partition")
    finally:
        await producer.stop()
    return topic


async def _consume_until(
    kafka_bootstrap: str, topic: str, handle: Any, done: asyncio.Event, *, batched: bool
) -> tuple[CollectorRegistry, int]:
    """Runs the loop until ``done``; its metrics and the offsets committed in all."""
    registry = CollectorRegistry()
    group = f"g-{uuid.uuid4().hex}"
    stop = asyncio.Event()
    task = asyncio.create_task(
        consume(
            name="test",
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
            group_id=group,
            topics=[topic],
            handle=handle,
            metrics=ConsumerMetrics(registry),
            stop=stop,
            beat=Heartbeat(),
            retry_s=0.1,
            batched=batched,
        )
    )
    await asyncio.wait_for(done.wait(), 30)
    stop.set()
    await asyncio.wait_for(task, 20)
    from aiokafka import AIOKafkaConsumer, TopicPartition

    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await reader.start()
    try:
        # create_topics makes three partitions.
        committed = [await reader.committed(TopicPartition(topic, p)) for p in range(3)]
    finally:
        await reader.stop()
    return registry, sum(offset or 0 for offset in committed)


def _retries(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("urr_booking_consumer_retries_total", {"consumer": "test"})


async def test_a_failing_record_is_retried_in_order_and_then_committed(
    kafka_bootstrap: str,
) -> None:
    topic = await _topic_with(kafka_bootstrap, [b"one", b"two", b"three"])
    seen: list[bytes] = []
    failed_once: set[bytes] = set()
    done = asyncio.Event()

    async def handle(record: object) -> str:
        value: bytes = record.value  # type: ignore[attr-defined]
        seen.append(value)
        if value == b"two" and value not in failed_once:
            failed_once.add(value)
            raise ConnectionError("PostgreSQL is down")
        if value == b"three":
            done.set()
        return "applied"

    registry, committed = await _consume_until(kafka_bootstrap, topic, handle, done, batched=False)
    assert seen == [b"one", b"two", b"two", b"three"]
    assert _retries(registry) == 1
    # Offsets were committed up to and including "three" (all on one partition).
    assert committed == 3


async def test_a_failing_batch_is_retried_whole_and_then_committed(
    kafka_bootstrap: str,
) -> None:
    topic = await _topic_with(kafka_bootstrap, [b"one", b"two", b"three"])
    handled: list[bytes] = []
    failures = 0
    done = asyncio.Event()

    async def handle(records: list[Any]) -> list[str]:
        nonlocal failures
        values = [record.value for record in records]
        if b"two" in values and failures == 0:
            failures += 1
            raise ConnectionError("PostgreSQL is down")  # nothing of this fetch counts
        handled.extend(values)
        if b"three" in values:
            done.set()
        return ["applied"] * len(records)

    registry, committed = await _consume_until(kafka_bootstrap, topic, handle, done, batched=True)
    assert handled == [b"one", b"two", b"three"]  # each once, in order, none skipped
    assert _retries(registry) == 1
    applied = registry.get_sample_value(
        "urr_booking_consumer_records_total",
        {"consumer": "test", "topic": topic, "outcome": "applied"},
    )
    assert applied == 3
    assert committed == 3
