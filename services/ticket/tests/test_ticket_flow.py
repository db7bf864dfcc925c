"""The whole booking path on real servers: reserve -> SQS FIFO -> worker -> outbox -> Kafka
-> payment stand-in -> reservation-events -> confirmed, holds released, and the record the
queue service consumes to free the user's Tier-2 slot."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from urr_common.identity_testing import act_as
from urr_ticket.appkeys import LOCKS_KEY
from urr_ticket.outcomes import outcome_loop
from urr_ticket.settings import TicketSettings
from urr_ticket_worker import handler
from urr_ticket_worker.local.poller import Poller, resolve_queue
from urr_ticket_worker.messages import MEMBERSHIP_EVENTS, QUEUE_EVENTS, RESERVATION_EVENTS
from urr_ticket_worker.payment import payment_loop
from urr_ticket_worker.process import Heartbeat, LoopBody
from urr_ticket_worker.relay import relay_loop
from urr_ticket_worker.testing import (
    Queues,
    json_objects,
    make_settings,
    read_topic,
    sqs_client,
)

pytestmark = pytest.mark.integration


def user(user_id: str) -> dict[str, str]:
    return act_as(user_id)


async def eventually(check: Any, timeout_s: float) -> None:
    """Wait until ``await check()`` is true (polling: the state lives in other processes)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await check():
                return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def running(*bodies: LoopBody) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(body(stop, Heartbeat())) for body in bodies]
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


@contextlib.asynccontextmanager
async def polling(
    settings: Any, moto_endpoint: str, queues: Queues, stop: asyncio.Event
) -> AsyncIterator[None]:
    """The local event source: the worker handler fed from SQS in its own thread."""
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, handler.configure, settings)

    async def poll() -> None:
        async with sqs_client(moto_endpoint) as sqs:
            poller = Poller(sqs, await resolve_queue(sqs, queues.name), settings, executor)
            while not stop.is_set():
                await poller.poll_once()

    task = asyncio.create_task(poll())
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
        await loop.run_in_executor(executor, handler.close)
        executor.shutdown()


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_reserve_pay_confirm_release_and_announce(
    client: Any,
    settings: TicketSettings,
    db: asyncpg.Pool,
    postgres_dsn: str,
    moto_endpoint: str,
    queues: Queues,
    booking_topics: str,
) -> None:
    tag = uuid.uuid4().hex[:8]
    worker = make_settings(
        postgres_dsn,
        kafka=booking_topics,
        moto=moto_endpoint,
        queues=queues,
        relay={"idle_poll_s": 0.05, "retry_s": 0.2, "flush_after_batch": False},
        payment={"decline_rate": 0.0, "delay_ms": 0},
        consumers={"payment_group": f"pay-{tag}"},
    )
    outcomes = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": booking_topics}),
            "consumers": settings.consumers.model_copy(update={"outcomes_group": f"out-{tag}"}),
        }
    )
    registry = CollectorRegistry()
    stop_polling = asyncio.Event()

    async def status_of(rid: str) -> str:
        response = await client.get(f"/api/v1/reservations/demo/{rid}", headers=user("fan-1"))
        return str((await response.json())["status"])

    async with (
        running(
            relay_loop(worker, CollectorRegistry()),
            payment_loop(worker, CollectorRegistry()),
            outcome_loop(outcomes, registry),
        ),
        polling(worker, moto_endpoint, queues, stop_polling),
    ):
        for seat in ("C1", "C2"):
            held = await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=user("fan-1"))
            assert held.status == 200
        response = await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["C1", "C2"]}, headers=user("fan-1")
        )
        assert response.status == 202
        rid = (await response.json())["reservationId"]
        await eventually(lambda: _is(status_of(rid), "confirmed"), 40)

        # The seats are sold (a sold seat is nobody's hold, whatever Redis still says) ...
        seat_map = await (await client.get("/api/v1/seats/demo", headers=user("fan-1"))).json()
        states = {s["seatId"]: (s["state"], s["heldByYou"]) for s in seat_map["seats"]}
        assert states["C1"] == ("sold", False)
        assert states["C2"] == ("sold", False)

        # ... and the holds are released: in Redis after the row (two stores, no common
        # transaction), so soon after "confirmed" is readable, not with it.
        async def holds_released() -> bool:
            return not await client.server.app[LOCKS_KEY].holders("demo", ["C1", "C2"])

        await eventually(holds_released, 10)

        # The record the queue service consumes to end fan-1's Tier-2 session.
        def answers(records: list[Any]) -> list[dict[str, Any]]:
            return [v for v in json_objects(records) if v.get("reservationId") == rid]

        records = await read_topic(booking_topics, RESERVATION_EVENTS, until=lambda rs: answers(rs))
        [announced] = answers(records)
        assert announced["status"] == "confirmed"
        assert announced["userId"] == "fan-1"
        assert announced["eventId"] == "demo"
        uuid.UUID(announced["messageId"])

        # A duplicate of that record changes nothing and is counted.
        producer = AIOKafkaProducer(bootstrap_servers=booking_topics, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(RESERVATION_EVENTS, orjson.dumps(announced), key=b"demo")
            await producer.send_and_wait(RESERVATION_EVENTS, b"{broken", key=b"demo")
        finally:
            await producer.stop()

        def counted(outcome: str) -> float:
            value = registry.get_sample_value(
                "urr_booking_consumer_records_total",
                {"consumer": "ticket-outcomes", "topic": RESERVATION_EVENTS, "outcome": outcome},
            )
            return value or 0.0

        async def skipped_both() -> bool:
            return counted("duplicate") >= 1 and counted("malformed") >= 1

        await eventually(skipped_both, 20)
        assert await status_of(rid) == "confirmed"
        # The stand-in's verdict is recorded with the reservation.
        verdict = await db.fetchval(
            "SELECT payment_verdict FROM reservations WHERE reservation_id = $1", uuid.UUID(rid)
        )
        assert verdict == "approved"

        # Two seats bought: two more holds fit under the cap of 4, a third does not.
        for seat in ("C3", "C4"):
            held = await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=user("fan-1"))
            assert held.status == 200
        over = await client.post("/api/v1/seats/demo/C5/hold", headers=user("fan-1"))
        assert over.status == 409
        assert (await over.json())["code"] == "seat_limit_reached"

        # fan-1 leaves the queue: the queue announces it on queue-events and the consumer
        # releases fan-1's holds.
        left = {
            "id": uuid.uuid4().hex,
            "type": "left",
            "eventId": "demo",
            "userId": "fan-1",
            "at": int(time.time() * 1000) + 1000,
            "reason": "leave",
            "phase": "admitted",
        }
        producer = AIOKafkaProducer(bootstrap_servers=booking_topics, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(QUEUE_EVENTS, orjson.dumps(left), key=b"demo")
        finally:
            await producer.stop()

        async def released() -> bool:
            seat_map = await (await client.get("/api/v1/seats/demo", headers=user("fan-1"))).json()
            return not any(s["heldByYou"] for s in seat_map["seats"])

        await eventually(released, 20)

    membership = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE topic = $1 AND payload->>'reservationId' = $2",
        MEMBERSHIP_EVENTS,
        rid,
    )
    assert membership == 1


async def test_a_declined_card_is_paid_again_while_the_seat_is_held(
    client: Any,
    settings: TicketSettings,
    db: asyncpg.Pool,
    postgres_dsn: str,
    moto_endpoint: str,
    queues: Queues,
    booking_topics: str,
) -> None:
    """Issue 21 end to end: the issuer declines the card (the stand-in at decline rate 1),
    the seat stays held by the buyer, attempt 2 of the same hold goes through (the stand-in
    now approving) and the seat is sold; the queue-facing record of the decline says
    ``card_declined``, which the queue service does not treat as the session's end."""
    tag = uuid.uuid4().hex[:8]

    def worker_settings(decline_rate: float) -> Any:
        return make_settings(
            postgres_dsn,
            kafka=booking_topics,
            moto=moto_endpoint,
            queues=queues,
            relay={"idle_poll_s": 0.05, "retry_s": 0.2, "flush_after_batch": False},
            payment={"decline_rate": decline_rate, "delay_ms": 0},
            # The second stand-in joins the group the first left: a short session lets the
            # group settle in seconds, not aiokafka's 10 s default (twice).
            consumers={
                "payment_group": f"pay-{tag}",
                "session_timeout_ms": 3_000,
                "heartbeat_interval_ms": 500,
            },
        )

    outcomes = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": booking_topics}),
            "consumers": settings.consumers.model_copy(update={"outcomes_group": f"out-{tag}"}),
        }
    )
    declining, approving = worker_settings(1.0), worker_settings(0.0)

    async def status_of(rid: str) -> str:
        response = await client.get(f"/api/v1/reservations/demo/{rid}", headers=user("fan-2"))
        return str((await response.json())["status"])

    async def seat_state() -> tuple[str, bool]:
        seat_map = await (await client.get("/api/v1/seats/demo", headers=user("fan-2"))).json()
        seat = next(s for s in seat_map["seats"] if s["seatId"] == "D7")
        return seat["state"], seat["heldByYou"]

    async def reserve(attempt: int) -> str:
        response = await client.post(
            "/api/v1/reservations/demo",
            json={"seatIds": ["D7"], "attempt": attempt},
            headers=user("fan-2"),
        )
        assert response.status == 202, await response.text()
        return str((await response.json())["reservationId"])

    stop_polling = asyncio.Event()
    async with (
        running(
            relay_loop(declining, CollectorRegistry()), outcome_loop(outcomes, CollectorRegistry())
        ),
        polling(declining, moto_endpoint, queues, stop_polling),
    ):
        held = await client.post("/api/v1/seats/demo/D7/hold", headers=user("fan-2"))
        assert held.status == 200
        async with running(payment_loop(declining, CollectorRegistry())):
            first = await reserve(1)
            await eventually(lambda: _is(status_of(first), "declined"), 40)
        reason = await db.fetchval(
            "SELECT reason FROM reservations WHERE reservation_id = $1", uuid.UUID(first)
        )
        assert reason == "card_declined"
        assert await seat_state() == ("held", True)  # still the buyer's, for a retry

        async with running(payment_loop(approving, CollectorRegistry())):
            second = await reserve(2)
            assert second != first
            await eventually(lambda: _is(status_of(second), "confirmed"), 40)
        assert (await seat_state())[0] == "sold"

        def answers(records: list[Any]) -> list[dict[str, Any]]:
            return [v for v in json_objects(records) if v.get("reservationId") == first]

        records = await read_topic(booking_topics, RESERVATION_EVENTS, until=lambda rs: answers(rs))
        declined = answers(records)[0]
        assert (declined["status"], declined["reason"]) == ("declined", "card_declined")
        from urr_queue.reservations import parse_reservation_event

        assert not parse_reservation_event(orjson.dumps(declined)).is_final
