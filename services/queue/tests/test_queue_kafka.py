"""queue-events out and reservation-events in, on a real Kafka-protocol broker (Tansu)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry

from urr_common.clients import open_kafka_producer
from urr_common.settings import KafkaSettings
from urr_queue.app import ADMISSION_LOOP
from urr_queue.context import QUEUE_CONTEXT
from urr_queue.events import EventType, QueueEventPublisher, event_record
from urr_queue.keys import event_keys
from urr_queue.metrics import QueueMetrics
from urr_queue.settings import QueueEventsSettings, ReservationEventsSettings

EVENT = "kafka-show"


async def create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def read_topic(bootstrap: str, topic: str, want: int, timeout_s: float = 15) -> list[Any]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records += [orjson.loads(record.value) for record in batch]
        return records
    finally:
        await consumer.stop()


async def test_queue_events_are_published(
    kafka_bootstrap, single_redis, queue_client, as_user, admin_headers
):
    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    client = await queue_client(
        single_redis,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        queue_events=QueueEventsSettings(topic=topic),
    )
    path = f"/api/v1/admin/queue/{EVENT}"
    await client.put(path, json={"capacity": 1, "admit_per_second": 1000}, headers=admin_headers)
    for user in ("a", "b", "c"):
        await client.post(f"/api/v1/queue/{EVENT}/enter", headers=as_user(user))
    await asyncio.sleep(0.02)
    await client.app[ADMISSION_LOOP].tick_all()
    await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("c"))

    records = await read_topic(kafka_bootstrap, topic, want=5)
    kinds = [(r["type"], r["userId"]) for r in records]
    # The admission comes through the outbox relay, on its own schedule; the others in order.
    assert [kind for kind in kinds if kind[0] != "admitted"] == [
        ("entered", "a"),
        ("entered", "b"),
        ("entered", "c"),
        ("left", "c"),
    ]
    assert kinds.count(("admitted", "a")) == 1
    assert len({r["id"] for r in records}) == 5, "every record has its own id for dedupe"
    assert all(r["eventId"] == EVENT and isinstance(r["at"], int) for r in records)
    assert [r["position"] for r in records[:3]] == [1, 2, 3]
    left = next(r for r in records if r["type"] == "left")
    assert left["reason"] == "leave"
    admitted = next(r for r in records if r["type"] == "admitted")
    assert (admitted["position"], admitted["queueNumber"]) == (1, 1)


async def test_reservation_events_end_sessions(
    kafka_bootstrap, single_redis, queue_client, as_user, admin_headers
):
    topic = f"reservation-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    client = await queue_client(
        single_redis,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        reservation_events=ReservationEventsSettings(
            topic=topic,
            group_id=f"g-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest",
            retry_delay_s=0.2,
        ),
    )
    path = f"/api/v1/admin/queue/{EVENT}"
    await client.put(path, json={"capacity": 5, "admit_per_second": 1000}, headers=admin_headers)
    for user in ("buyer", "waiter"):
        await client.post(f"/api/v1/queue/{EVENT}/enter", headers=as_user(user))
    await asyncio.sleep(0.02)
    await client.app[ADMISSION_LOOP].tick_all()
    admitted = await client.get(f"/api/v1/queue/{EVENT}/status", headers=as_user("buyer"))
    assert (await admitted.json())["status"] == "admitted"

    confirmed = {"eventId": EVENT, "userId": "buyer", "status": "confirmed", "reservationId": "r1"}
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in (
            b"not json",
            b'{"eventId": "bad id!", "userId": "x", "status": "confirmed", "reservationId": 1}',
            orjson.dumps({**confirmed, "status": "pending", "reservationId": "r0"}),
            orjson.dumps(confirmed),
            orjson.dumps(confirmed),  # redelivered
        ):
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()

    metrics = client.app[QUEUE_CONTEXT].metrics.reservation_records
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = {
            s.labels["outcome"]: s.value
            for s in metrics.collect()[0].samples
            if s.name.endswith("_total")
        }
        if sum(counts.values()) >= 5:
            break
        await asyncio.sleep(0.1)
    assert counts == {"malformed": 2, "ignored": 1, "applied": 1, "duplicate": 1}
    gone = await client.get(f"/api/v1/queue/{EVENT}/status", headers=as_user("buyer"))
    assert gone.status == 404
    still = await client.get(f"/api/v1/queue/{EVENT}/status", headers=as_user("waiter"))
    assert (await still.json())["status"] == "admitted"


async def test_kafka_down_never_blocks_nor_fails_requests(
    single_redis, queue_client, as_user, admin_headers
):
    from urr_devstack.procs import free_port

    dead = f"127.0.0.1:{free_port()}"
    client = await queue_client(
        single_redis,
        kafka=KafkaSettings(bootstrap_servers=dead, request_timeout_ms=500),
        queue_events=QueueEventsSettings(buffer_size=3, retry_delay_s=0.2),
        reservation_events=ReservationEventsSettings(retry_delay_s=0.2),
    )
    path = f"/api/v1/admin/queue/{EVENT}"
    await client.put(path, json={"mode": "passthrough"}, headers=admin_headers)
    started = time.monotonic()
    for index in range(10):
        response = await client.post(f"/api/v1/queue/{EVENT}/enter", headers=as_user(f"u{index}"))
        assert response.status == 200
    assert time.monotonic() - started < 5
    assert (await client.get("/health/ready")).status == 200
    ctx = client.app[QUEUE_CONTEXT]
    dropped = ctx.metrics.events_dropped.labels("buffer_full")
    assert dropped._value.get() >= 7  # 10 best-effort ``entered`` records, 3 fit
    # The admissions' records wait in the outbox for the broker (issue 19): none dropped.
    assert await ctx.store.redis.xlen(event_keys(EVENT).outbox) == 10


async def test_publisher_sends_in_order_and_counts(kafka_bootstrap):
    topic = f"unit-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    metrics = QueueMetrics.register(CollectorRegistry())
    publisher = QueueEventPublisher(
        topic,
        buffer_size=100,
        metrics=metrics,
        producer_factory=lambda: open_kafka_producer(
            KafkaSettings(bootstrap_servers=kafka_bootstrap)
        ),
    )
    task = asyncio.create_task(publisher.run())
    try:
        for index in range(20):
            publisher.publish(event_record(EventType.ENTERED, "e", f"u{index}", at_ms=index))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if metrics.events_published._value.get() >= 20:
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert metrics.events_published._value.get() == 20
    records = await read_topic(kafka_bootstrap, topic, want=20)
    assert [r["userId"] for r in records] == [f"u{index}" for index in range(20)]


async def test_an_order_hold_waiver_is_published_before_the_late_admission(
    kafka_bootstrap, single_redis, queue_client, as_user, admin_headers, tier1_signer
):
    """Tier-1 number 1 is late: the hold gives up on it after the grace, 2 goes first, and the
    waiver for 1 is on queue-events before 2's admission and 1's late one."""
    from urr_queue.settings import AdmissionSettings

    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic)
    client = await queue_client(
        single_redis,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        queue_events=QueueEventsSettings(topic=topic),
        admission=AdmissionSettings(enabled=False, tier1_order_grace_s=0.2),
    )
    event = "kafka-waiver"
    path = f"/api/v1/admin/queue/{event}"
    body = {"require_tier1_token": True, "admit_per_second": 1000}
    assert (await client.put(path, json=body, headers=admin_headers)).status == 201

    async def enter(number: int) -> None:
        uid = f"u{number}"
        claims = {"evt": event, "rid": f"r{number}", "pos": number, "uid": uid}
        token = tier1_signer.sign(f"r{number}", claims)
        entered = await client.post(
            f"/api/v1/queue/{event}/enter", headers=as_user(uid), cookies={"urr-vwr-token": token}
        )
        assert entered.status == 201, await entered.text()

    loop = client.app[ADMISSION_LOOP]
    await enter(2)
    await asyncio.sleep(0.02)
    assert (await loop.tick(event)).order_held
    await asyncio.sleep(0.3)
    waived = await loop.tick(event)
    assert waived.waived_numbers == (1,)
    await enter(1)
    await asyncio.sleep(0.02)
    late = await loop.tick(event)
    assert [number for _, number in late.admitted] == [1]

    records = await read_topic(kafka_bootstrap, topic, want=5)
    shown = [
        (r["type"], r.get("queueNumbers") or r.get("queueNumber"))
        for r in records
        if r["type"] in ("waived", "admitted")
    ]
    assert shown == [("waived", [1]), ("admitted", 2), ("admitted", 1)]
    assert records[[r["type"] for r in records].index("waived")]["reason"] == "order_hold"
