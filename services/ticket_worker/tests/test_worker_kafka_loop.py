"""The consumer loop: a record whose handling fails (a dependency down) is retried, never
skipped, and offsets are committed only for what was handled."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from urr_common.settings import KafkaSettings
from urr_ticket_worker.kafka_loop import ConsumerMetrics, consume
from urr_ticket_worker.process import Heartbeat
from urr_ticket_worker.testing import create_topics

pytestmark = pytest.mark.integration


async def test_a_failing_record_is_retried_in_order_and_then_committed(
    kafka_bootstrap: str,
) -> None:
    topic = f"loop-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(create_topics, kafka_bootstrap, [topic])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for value in (b"one", b"two", b"three"):
            await producer.send_and_wait(topic, value, key=b"same-partition")
    finally:
        await producer.stop()

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

    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    group = f"g-{uuid.uuid4().hex}"
    stop = asyncio.Event()

    async def run_once() -> None:
        await consume(
            name="test",
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
            group_id=group,
            topics=[topic],
            handle=handle,
            metrics=metrics,
            stop=stop,
            beat=Heartbeat(),
            retry_s=0.1,
        )

    task = asyncio.create_task(run_once())
    await asyncio.wait_for(done.wait(), 30)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert seen == [b"one", b"two", b"two", b"three"]
    assert (
        registry.get_sample_value("urr_booking_consumer_retries_total", {"consumer": "test"}) == 1
    )

    # Offsets were committed up to and including "three" (all on one partition).
    from aiokafka import AIOKafkaConsumer, TopicPartition

    reader = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await reader.start()
    try:
        # create_topics makes three partitions.
        committed = [await reader.committed(TopicPartition(topic, p)) for p in range(3)]
    finally:
        await reader.stop()
    assert sum(offset or 0 for offset in committed) == 3
