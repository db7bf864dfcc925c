"""The outbox relay against a real Kafka-protocol broker, including one that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from urr_common.clients import open_aws_clients
from urr_common.settings import AwsSettings
from urr_devstack.procs import ServerProcess, free_port, tansu_server
from urr_ticket_worker import handler
from urr_ticket_worker.booking import apply_command
from urr_ticket_worker.messages import PAYMENT_EVENTS, ReserveCommand
from urr_ticket_worker.process import Heartbeat
from urr_ticket_worker.relay import relay_loop
from urr_ticket_worker.settings import BookingSettings, TicketWorkerSettings
from urr_ticket_worker.testing import make_settings, read_topic, seed_event, sqs_record

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def running_relay(settings: TicketWorkerSettings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay_loop(settings, CollectorRegistry())(stop, Heartbeat()))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def book(pool: asyncpg.Pool, event_id: str, seats: list[str]) -> list[uuid.UUID]:
    """One reservation per seat through the worker's own code; returns the outbox ids."""
    for seat in seats:
        command = ReserveCommand(
            reservation_id=uuid.uuid4(), event_id=event_id, user_id=f"u-{seat}", seat_ids=[seat]
        )
        assert await apply_command(pool, uuid.uuid4().hex, command, BookingSettings()) == "applied"
    rows = await pool.fetch("SELECT message_id FROM outbox WHERE key = $1 ORDER BY id", event_id)
    return [r["message_id"] for r in rows]


async def wait_for(predicate: Callable[[], Any], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def relay_settings(postgres_dsn: str, bootstrap: str) -> TicketWorkerSettings:
    return make_settings(
        postgres_dsn,
        kafka=bootstrap,
        relay={
            "idle_poll_s": 0.05,
            "retry_s": 0.2,
            "expire_every_s": 60,
            "flush_after_batch": False,
        },
    )


def message_ids(records: list[Any], event_id: str) -> list[uuid.UUID]:
    return [
        uuid.UUID(orjson.loads(r.value)["messageId"]) for r in records if r.key == event_id.encode()
    ]


async def test_outbox_rows_are_published_in_order_and_marked_sent(
    pool: asyncpg.Pool, postgres_dsn: str, booking_topics: str
) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    seats = await seed_event(pool, event_id, rows=2, per_row=10)
    expected = await book(pool, event_id, seats)
    async with running_relay(relay_settings(postgres_dsn, booking_topics)):
        await wait_for(lambda: _unsent_is_zero(pool))
    records = await read_topic(
        booking_topics, PAYMENT_EVENTS, until=lambda rs: len(message_ids(rs, event_id)) >= 20
    )
    assert message_ids(records, event_id) == expected


async def _unsent_is_zero(pool: asyncpg.Pool) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0)


@pytest_asyncio.fixture
async def durable_broker(moto_endpoint: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """Our own Tansu keeping its log in S3 (moto), so a restart keeps what it had."""
    bucket = f"tansu-{uuid.uuid4().hex[:12]}"
    aws = AwsSettings(
        endpoint_url=moto_endpoint,
        access_key_id=SecretStr("test"),
        secret_access_key=SecretStr("test"),
    )
    async with open_aws_clients(aws, "s3") as clients:
        await clients["s3"].create_bucket(Bucket=bucket)
    env = {
        "AWS_ENDPOINT": moto_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    broker = tansu_server(free_port(), tmp_path / "tansu.log", storage=f"s3://{bucket}/", env=env)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_kafka_down_the_outbox_holds_and_everything_goes_out_in_order_after(
    pool: asyncpg.Pool, postgres_dsn: str, durable_broker: ServerProcess
) -> None:
    bootstrap = f"127.0.0.1:{durable_broker.port}"
    event_id = "ev1"
    seats = await seed_event(pool, event_id, rows=3, per_row=5)
    async with running_relay(relay_settings(postgres_dsn, bootstrap)):
        await book(pool, event_id, seats[:5])
        await wait_for(lambda: _unsent_is_zero(pool))

        durable_broker.stop()
        expected = await book(pool, event_id, seats[5:])  # bookings go on without Kafka
        await asyncio.sleep(1.0)
        unsent = await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        assert unsent == 10  # held, not lost

        durable_broker.start()
        await wait_for(lambda: _unsent_is_zero(pool), timeout_s=30)

    records = await read_topic(
        bootstrap, PAYMENT_EVENTS, until=lambda rs: len(set(message_ids(rs, event_id))) >= 15
    )
    published = message_ids(records, event_id)
    # Every event, in outbox order (a re-sent copy may follow; consumers drop it by id).
    first_seen = list(dict.fromkeys(published))
    assert first_seen == expected


async def test_the_lambda_flushes_its_outbox_after_the_batch_and_shrugs_off_a_dead_kafka(
    pool: asyncpg.Pool, postgres_dsn: str, booking_topics: str, lambda_thread: Any
) -> None:
    event_id = f"ev-{uuid.uuid4().hex[:8]}"
    seats = await seed_event(pool, event_id, rows=1, per_row=4)

    def records(users: list[str], taken: int) -> dict[str, Any]:
        return {
            "Records": [
                sqs_record(
                    ReserveCommand(
                        reservation_id=uuid.uuid4(), event_id=event_id, user_id=u, seat_ids=[s]
                    )
                    .to_json()
                    .decode(),
                    group=event_id,
                )
                for u, s in zip(users, seats[taken:], strict=False)
            ]
        }

    flushing = {"flush_after_batch": True, "flush_timeout_s": 2.0}
    # Kafka unreachable: the batch still succeeds at once, the rows wait for the relay.
    dead = make_settings(postgres_dsn, kafka=f"127.0.0.1:{free_port()}", relay=flushing)
    lambda_thread(handler.configure, dead)
    started = time.monotonic()
    assert (
        lambda_thread(handler.lambda_handler, records(["u1"], 0), None)["batchItemFailures"] == []
    )
    assert time.monotonic() - started < 5
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
    # Kafka reachable: the next invocation publishes its rows and the waiting one, in order.
    lambda_thread(
        handler.configure, make_settings(postgres_dsn, kafka=booking_topics, relay=flushing)
    )
    assert (
        lambda_thread(handler.lambda_handler, records(["u2", "u3"], 1), None)["batchItemFailures"]
        == []
    )
    assert await _unsent_is_zero(pool)
    expected = await pool.fetch(
        "SELECT message_id FROM outbox WHERE key = $1 ORDER BY id", event_id
    )
    published = await read_topic(
        booking_topics, PAYMENT_EVENTS, until=lambda rs: len(message_ids(rs, event_id)) >= 3
    )
    assert message_ids(published, event_id) == [r["message_id"] for r in expected]
