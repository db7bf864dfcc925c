"""Helpers for tests of the booking back end (and of the ticket API, which shares them):
private SQS FIFO queues, booking topics, settings pointing at test servers, seeded events and
SQS event records. Imported by the test folders' ``conftest.py``; never by production code."""

from __future__ import annotations

import asyncio
import contextlib
import string
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from pydantic import SecretStr

from urr_common.clients import open_aws_clients
from urr_common.settings import AwsSettings, load_settings
from urr_ticket_worker.messages import (
    MEMBERSHIP_EVENTS,
    PAYMENT_EVENTS,
    QUEUE_EVENTS,
    RESERVATION_EVENTS,
    TRANSFER_EVENTS,
)
from urr_ticket_worker.settings import TicketWorkerSettings

BOOKING_TOPICS = [
    PAYMENT_EVENTS,
    RESERVATION_EVENTS,
    TRANSFER_EVENTS,
    MEMBERSHIP_EVENTS,
    QUEUE_EVENTS,
]


@dataclass(frozen=True)
class Queues:
    name: str
    url: str
    dlq_name: str
    dlq_url: str


@asynccontextmanager
async def sqs_client(endpoint: str) -> AsyncIterator[Any]:
    settings = AwsSettings(
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id=SecretStr("test"),
        secret_access_key=SecretStr("test"),
    )
    async with open_aws_clients(settings, "sqs") as clients:
        yield clients["sqs"]


async def create_queues(endpoint: str, visibility_timeout_s: int = 1) -> Queues:
    """A private FIFO queue and its DLQ (after 3 receives) with a unique name."""
    suffix = uuid.uuid4().hex[:10]
    async with sqs_client(endpoint) as sqs:
        dlq_name = f"ticket-events-dlq-{suffix}.fifo"
        dlq_url = (await sqs.create_queue(QueueName=dlq_name, Attributes={"FifoQueue": "true"}))[
            "QueueUrl"
        ]
        attributes = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        dlq_arn = attributes["Attributes"]["QueueArn"]
        name = f"ticket-events-{suffix}.fifo"
        created = await sqs.create_queue(
            QueueName=name,
            Attributes={
                "FifoQueue": "true",
                "VisibilityTimeout": str(visibility_timeout_s),
                "RedrivePolicy": f'{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"3"}}',
            },
        )
    return Queues(name, created["QueueUrl"], dlq_name, dlq_url)


def create_topics(bootstrap: str, topics: list[str] | None = None) -> None:
    """Create the booking topics (3 partitions each) where missing."""

    async def create() -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [NewTopic(t, 3, 1) for t in topics or BOOKING_TOPICS if t not in existing]
            if missing:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(missing)
        finally:
            await admin.close()

    asyncio.run(create())


def make_settings(
    postgres_dsn: str,
    *,
    kafka: str = "127.0.0.1:1",
    moto: str | None = None,
    queues: Queues | None = None,
    **overrides: Any,
) -> TicketWorkerSettings:
    values: dict[str, Any] = {
        "environment": "test",
        "postgres": {"dsn": postgres_dsn, "min_connections": 0, "max_connections": 4},
        "kafka": {"bootstrap_servers": kafka, "request_timeout_ms": 3000},
        "aws": {
            "endpoint_url": moto,
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": "test",
        },
        # No Kafka unless a test asks: the Lambda's post-batch flush is the relay's business.
        "relay": {"flush_after_batch": False},
    }
    if queues is not None:
        values["sqs"] = {"queue_name": queues.name, "dlq_name": queues.dlq_name, "wait_time_s": 1}
    values.update(overrides)
    return load_settings(TicketWorkerSettings, **values)


async def send_fifo(sqs: Any, queues: Queues, bodies: list[tuple[str, str]]) -> None:
    """Send (group, body) pairs to ``queues`` in order, ten per call."""
    for start in range(0, len(bodies), 10):
        entries = [
            {
                "Id": str(i),
                "MessageBody": body,
                "MessageGroupId": group,
                "MessageDeduplicationId": uuid.uuid4().hex,
            }
            for i, (group, body) in enumerate(bodies[start : start + 10])
        ]
        response = await sqs.send_message_batch(QueueUrl=queues.url, Entries=entries)
        if response.get("Failed"):
            raise RuntimeError(f"SQS refused messages: {response['Failed']}")


async def seed_event(
    pool: asyncpg.Pool, event_id: str, rows: int = 2, per_row: int = 5
) -> list[str]:
    """An event with ``rows`` x ``per_row`` seats at 1000 cents each; returns the seat ids."""
    seats = [f"{r}{n}" for r in string.ascii_uppercase[:rows] for n in range(1, per_row + 1)]
    await pool.execute(
        "INSERT INTO booking_events (event_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        event_id,
        f"event {event_id}",
    )
    await pool.executemany(
        "INSERT INTO seats (event_id, seat_id, row_label, seat_number, price_cents)"
        " VALUES ($1, $2, $3, $4, 1000) ON CONFLICT DO NOTHING",
        [(event_id, s, s[0], int(s[1:])) for s in seats],
    )
    return seats


def sqs_record(
    body: str, *, group: str = "ev1", message_id: str | None = None, receive_count: int = 1
) -> dict[str, Any]:
    """One record of an SQS event as Lambda's event source builds it."""
    message_id = message_id or str(uuid.uuid4())
    return {
        "messageId": message_id,
        "receiptHandle": f"rh-{message_id}",
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": str(receive_count),
            "MessageGroupId": group,
            "MessageDeduplicationId": message_id,
            "SentTimestamp": "1700000000000",
            "SequenceNumber": "1",
        },
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:ticket-events.fifo",
        "awsRegion": "us-east-1",
    }


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Any,
    timeout_s: float = 15.0,
) -> list[Any]:
    """Every record of ``topic`` from the beginning, read until ``until(records)`` is true."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not until(records):
                batch = await consumer.getmany(timeout_ms=200)
                for partition_records in batch.values():
                    records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


def json_objects(records: list[Any]) -> list[dict[str, Any]]:
    """The JSON-object values among ``records`` (a shared topic may hold others' junk)."""
    import orjson

    found = []
    for record in records:
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            found.append(value)
    return found
