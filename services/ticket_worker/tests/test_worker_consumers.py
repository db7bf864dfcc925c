"""The stats consumer and the payment stand-in on a real broker: duplicates and malformed
records are skipped and counted, never applied twice, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from urr_ticket_worker.messages import (
    MEMBERSHIP_EVENTS,
    PAYMENT_EVENTS,
    QUEUE_EVENTS,
    RESERVATION_EVENTS,
    TRANSFER_EVENTS,
    MembershipRecorded,
    PaymentRequested,
    TicketTransferred,
)
from urr_ticket_worker.payment import declines, payment_loop
from urr_ticket_worker.process import Heartbeat, LoopBody
from urr_ticket_worker.stats import stats_loop
from urr_ticket_worker.testing import json_objects, make_settings, read_topic

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running(body: LoopBody) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(body(stop, Heartbeat()))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def produce(bootstrap: str, records: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for topic, value in records:
            await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


def sample(registry: CollectorRegistry, outcome: str, consumer: str) -> float:
    total = 0.0
    for topic in (QUEUE_EVENTS, TRANSFER_EVENTS, MEMBERSHIP_EVENTS, PAYMENT_EVENTS):
        value = registry.get_sample_value(
            "urr_booking_consumer_records_total",
            {"consumer": consumer, "topic": topic, "outcome": outcome},
        )
        total += value or 0.0
    return total


async def test_stats_count_each_message_once_and_skip_malformed_ones(
    pool: asyncpg.Pool, postgres_dsn: str, booking_topics: str
) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    entered = orjson.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": "entered",
            "eventId": event_id,
            "userId": "u1",
            "position": 1,
            "at": 1700000000.5,
        }
    )
    admitted = orjson.dumps(
        {
            "id": uuid.uuid4().hex,
            "type": "admitted",
            "eventId": event_id,
            "userId": "u1",
            "position": None,
            "at": "2026-11-23T10:00:00Z",
        }
    )
    transfer = TicketTransferred(
        message_id=uuid.uuid4(),
        reservation_id=uuid.uuid4(),
        event_id=event_id,
        from_user_id="u1",
        to_user_id="u2",
        seat_ids=["A1"],
    ).to_json()
    member = MembershipRecorded(
        message_id=uuid.uuid4(),
        type="purchase_confirmed",
        reservation_id=uuid.uuid4(),
        event_id=event_id,
        user_id="u1",
        seats=2,
    ).to_json()
    await produce(
        booking_topics,
        [
            (QUEUE_EVENTS, entered),
            (QUEUE_EVENTS, b"\xff not json"),
            (QUEUE_EVENTS, entered),  # duplicate
            (QUEUE_EVENTS, b'{"id": "x", "type": "teleported", "eventId": "e", "userId": "u"}'),
            (QUEUE_EVENTS, admitted),
            (TRANSFER_EVENTS, transfer),
            (TRANSFER_EVENTS, transfer),  # duplicate
            (MEMBERSHIP_EVENTS, member),
            (MEMBERSHIP_EVENTS, b"[]"),
        ],
    )
    registry = CollectorRegistry()
    settings = make_settings(
        postgres_dsn, kafka=booking_topics, consumers={"stats_group": f"stats-{uuid.uuid4().hex}"}
    )
    expected = {
        "queue.entered": 1,
        "queue.admitted": 1,
        "transfers": 1,
        "membership.purchase_confirmed": 1,
    }

    async def counters() -> dict[str, int]:
        rows = await pool.fetch(
            "SELECT counter, value FROM event_stats WHERE event_id = $1", event_id
        )
        return {r["counter"]: r["value"] for r in rows}

    async with running(stats_loop(settings, registry)):
        async with asyncio.timeout(20):
            while await counters() != expected or sample(registry, "malformed", "stats") < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    assert await counters() == expected
    assert sample(registry, "duplicate", "stats") >= 2
    assert sample(registry, "malformed", "stats") >= 3


def test_the_stand_in_declines_at_the_configured_rate_and_always_the_same_way() -> None:
    ids = [uuid.UUID(int=i * 7919 + 1) for i in range(4000)]
    rate = sum(declines(i, 0.25) for i in ids) / len(ids)
    assert 0.22 < rate < 0.28
    assert [declines(i, 0.25) for i in ids[:50]] == [declines(i, 0.25) for i in ids[:50]]
    assert not any(declines(i, 0.0) for i in ids)
    assert all(declines(i, 1.0) for i in ids)


@pytest.mark.parametrize(("rate", "status"), [(0.0, "confirmed"), (1.0, "declined")])
async def test_the_payment_stand_in_answers_once_per_request(
    postgres_dsn: str, booking_topics: str, rate: float, status: str
) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    request = PaymentRequested(
        message_id=uuid.uuid4(),
        reservation_id=uuid.uuid4(),
        event_id=event_id,
        user_id="u1",
        seat_ids=["A1"],
        amount_cents=1000,
    )
    await produce(
        booking_topics,
        [
            (PAYMENT_EVENTS, request.to_json()),
            (PAYMENT_EVENTS, b"{}"),
            (PAYMENT_EVENTS, request.to_json()),
        ],
    )
    registry = CollectorRegistry()
    settings = make_settings(
        postgres_dsn,
        kafka=booking_topics,
        payment={"decline_rate": rate, "delay_ms": 0},
        consumers={"payment_group": f"pay-{uuid.uuid4().hex}"},
    )

    def answers(records: list[Any]) -> list[dict[str, Any]]:
        values = json_objects(records)
        return [v for v in values if v.get("reservationId") == str(request.reservation_id)]

    async with running(payment_loop(settings, registry)):
        records = await read_topic(
            booking_topics, RESERVATION_EVENTS, until=lambda rs: len(answers(rs)) >= 2
        )
    outcomes = answers(records)
    assert {o["status"] for o in outcomes} == {status}
    assert len({o["messageId"] for o in outcomes}) == 1  # the copy is recognisable as one
    assert outcomes[0]["userId"] == "u1"
    assert outcomes[0]["eventId"] == event_id
