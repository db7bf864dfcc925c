"""The stats consumer and the payment stand-in on a real broker: duplicates and malformed
records are skipped and counted, never applied twice, never a crash."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from urr_ticket_worker.booking import count_many
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
from urr_ticket_worker.payment import draw_verdict, payment_loop, record_verdict
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


def test_the_stand_in_declines_at_the_configured_rate() -> None:
    draws = [draw_verdict(0.25) for _ in range(4000)]
    assert 0.22 < draws.count("declined") / len(draws) < 0.28
    assert {draw_verdict(0.0) for _ in range(200)} == {"approved"}
    assert {draw_verdict(1.0) for _ in range(200)} == {"declined"}


def old_hash_verdict(reservation_id: uuid.UUID, rate: float) -> str:
    """The recipe the stand-in used before issue 15 (a hash of the reservation id): what a
    client re-holding until 'approved' would compute."""
    digest = hashlib.sha256(reservation_id.bytes).digest()
    return "declined" if int.from_bytes(digest[:8], "big") / 2**64 < rate else "approved"


async def insert_reservation(pool: asyncpg.Pool, user: str = "u1") -> uuid.UUID:
    reservation_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
        " VALUES ($1, 'ev1', $2, ARRAY['A1'], 'awaiting_payment')",
        reservation_id,
        user,
    )
    return reservation_id


async def test_the_verdict_is_recorded_once_and_read_back(pool: asyncpg.Pool) -> None:
    reservation_id = await insert_reservation(pool)
    assert await record_verdict(pool, reservation_id, "declined") == "declined"
    # A redelivery draws again, but the first verdict stands.
    assert await record_verdict(pool, reservation_id, "approved") == "declined"
    assert await pool.fetchval("SELECT payment_verdict FROM reservations") == "declined"
    assert await record_verdict(pool, uuid.uuid4(), "approved") is None  # unknown: not written
    assert await pool.fetchval("SELECT count(*) FROM reservations") == 1


async def test_the_verdict_is_not_a_function_of_the_reservation_id(pool: asyncpg.Pool) -> None:
    ids = [await insert_reservation(pool) for _ in range(200)]
    recorded = [await record_verdict(pool, i, draw_verdict(0.5)) for i in ids]
    predicted = [old_hash_verdict(i, 0.5) for i in ids]
    # Half of the guesses are right by chance; all 200 would be a chance of 2**-200.
    assert 40 < sum(r == p for r, p in zip(recorded, predicted, strict=True)) < 160


@pytest.mark.parametrize(
    ("rate", "recorded", "status"),
    [(0.0, None, "confirmed"), (1.0, None, "declined"), (0.0, "declined", "declined")],
)
async def test_the_payment_stand_in_answers_once_per_request(
    postgres_dsn: str,
    booking_topics: str,
    pool: asyncpg.Pool,
    rate: float,
    recorded: str | None,
    status: str,
) -> None:
    reservation_id = await insert_reservation(pool)
    if recorded is not None:  # a verdict drawn before a restart: the redelivery keeps it
        await pool.execute("UPDATE reservations SET payment_verdict = $1", recorded)
    request = PaymentRequested(
        message_id=uuid.uuid4(),
        reservation_id=reservation_id,
        event_id="ev1",
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
    assert outcomes[0]["eventId"] == "ev1"
    verdict = "declined" if status == "declined" else "approved"
    assert await pool.fetchval("SELECT payment_verdict FROM reservations") == verdict


async def test_a_batch_of_counts_commits_once_per_id_and_all_or_nothing(
    pool: asyncpg.Pool,
) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    consumer = f"test:{uuid.uuid4().hex[:8]}"
    first = [
        ("m1", event_id, ["queue.entered"]),
        ("m2", event_id, ["queue.entered"]),
        ("m1", event_id, ["queue.entered"]),  # the same record twice in one fetch
        ("m3", event_id, ["queue.admitted", "queue.entered"]),
    ]
    assert await count_many(pool, consumer, first) == [
        "applied",
        "applied",
        "duplicate",
        "applied",
    ]
    # Redelivered after a commit that Kafka never heard of: counted once, not twice.
    assert await count_many(pool, consumer, [("m2", event_id, ["queue.entered"])]) == ["duplicate"]

    async def counters() -> dict[str, int]:
        rows = await pool.fetch(
            "SELECT counter, value FROM event_stats WHERE event_id = $1", event_id
        )
        return {r["counter"]: r["value"] for r in rows}

    assert await counters() == {"queue.entered": 3, "queue.admitted": 1}
    # A batch that fails part-way (an event id PostgreSQL refuses: a NUL in text) leaves no
    # claim and no count behind: the consumer retries the whole fetch and counts it then.
    with pytest.raises(asyncpg.PostgresError):
        await count_many(
            pool, consumer, [("m4", event_id, ["queue.left"]), ("m5", "e\x00", ["queue.left"])]
        )
    assert await counters() == {"queue.entered": 3, "queue.admitted": 1}
    assert await count_many(pool, consumer, [("m4", event_id, ["queue.left"])]) == ["applied"]
    assert (await counters())["queue.left"] == 1
