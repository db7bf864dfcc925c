"""The worker behind real SQS FIFO queues (moto): DLQ, FIFO order, a killed poller."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge

from urr_devstack.procs import free_port
from urr_ticket_worker import handler
from urr_ticket_worker.local.poller import Poller, resolve_queue
from urr_ticket_worker.messages import ReserveCommand
from urr_ticket_worker.metrics import oldest_age_s
from urr_ticket_worker.testing import Queues, make_settings, seed_event
from urr_ticket_worker.testing import send_fifo as send

pytestmark = pytest.mark.integration


def reserve_body(user: str, seat: str, event: str = "ev1") -> str:
    command = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id=event, user_id=user, seat_ids=[seat]
    )
    return command.to_json().decode()


async def queue_depth(sqs: Any, url: str) -> int:
    attributes = await sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    values = attributes["Attributes"]
    return int(values["ApproximateNumberOfMessages"]) + int(
        values["ApproximateNumberOfMessagesNotVisible"]
    )


async def users(pool: asyncpg.Pool) -> set[str]:
    return {r["user_id"] for r in await pool.fetch("SELECT user_id FROM reservations")}


async def test_poison_reaches_the_dlq_after_three_receives_and_the_rest_is_applied(
    sqs: Any, queues: Queues, poller: Poller, pool: asyncpg.Pool
) -> None:
    # Note: moto does not keep FIFO order when it redelivers (measured: a later message of
    # the group comes back before the failed one), so order across redeliveries is asserted
    # on the handler with the delivery sequence real SQS makes (test_worker_handler.py).
    poison = '{"type": "reserve", "reservationId": "not-a-uuid"}'
    await send(
        sqs,
        queues,
        [
            ("ev1", reserve_body("u1", "A1")),
            ("ev1", poison),
            ("ev1", reserve_body("u2", "A2")),
            ("ev1", reserve_body("u3", "A3")),
            ("ev2", reserve_body("u9", "B1")),
        ],
    )
    failures = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, failed = await poller.poll_once()
        failures += failed
        drained = await queue_depth(sqs, queues.url) == 0
        if drained and await users(pool) == {"u1", "u2", "u3", "u9"}:
            break
    else:
        pytest.fail(f"not drained: {await users(pool)}")
    dead = await sqs.receive_message(
        QueueUrl=queues.dlq_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
    )
    assert [m["Body"] for m in dead["Messages"]] == [poison]
    assert int(dead["Messages"][0]["Attributes"]["ApproximateReceiveCount"]) >= 3
    assert failures >= 3
    assert await pool.fetchval("SELECT count(*) FROM reservations") == 4


async def test_a_poller_killed_mid_batch_loses_and_doubles_nothing(
    sqs: Any,
    queues: Queues,
    pool: asyncpg.Pool,
    postgres_dsn: str,
    moto_endpoint: str,
    tmp_path: Any,
) -> None:
    seats = await seed_event(pool, "ev1", rows=5, per_row=10)
    count = len(seats)
    await send(
        sqs,
        queues,
        [(f"g{i % 3}", reserve_body(f"user-{i}", seat)) for i, seat in enumerate(seats)],
    )
    env = {
        **os.environ,
        "URR_POSTGRES__DSN": postgres_dsn,
        "URR_AWS__ENDPOINT_URL": moto_endpoint,
        "URR_AWS__REGION": "us-east-1",
        "URR_AWS__ACCESS_KEY_ID": "test",
        "URR_AWS__SECRET_ACCESS_KEY": "test",
        "URR_SQS__QUEUE_NAME": queues.name,
        "URR_SQS__WAIT_TIME_S": "1",
        "URR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "URR_RELAY__FLUSH_AFTER_BATCH": "false",
        "URR_HTTP__USE_UVLOOP": "false",
        "URR_LOG__LEVEL": "INFO",
    }

    def start() -> subprocess.Popen[bytes]:
        env["URR_HTTP__PORT"] = str(free_port())
        with (tmp_path / "poller.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "urr_ticket_worker.local.poller"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    first = start()
    try:
        deadline = time.monotonic() + 30
        while await pool.fetchval("SELECT count(*) FROM reservations") < 8:
            assert time.monotonic() < deadline, (tmp_path / "poller.log").read_text()
            await asyncio.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    applied_when_killed = await pool.fetchval("SELECT count(*) FROM reservations")
    assert applied_when_killed < count  # it died in the middle
    # The event source starts the worker again (here in-process: a second process start
    # would only cost seconds); what the dead one had in flight comes back after the
    # visibility timeout.
    settings = make_settings(postgres_dsn, moto=moto_endpoint, queues=queues)
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, handler.configure, settings)
    try:
        poller = Poller(sqs, await resolve_queue(sqs, queues.name), settings, executor)
        deadline = time.monotonic() + 40
        while await queue_depth(sqs, queues.url) or (
            await pool.fetchval("SELECT count(*) FROM reservations") < count
        ):
            assert time.monotonic() < deadline, "the queue did not drain"
            await poller.poll_once()
    finally:
        await loop.run_in_executor(executor, handler.close)
        executor.shutdown()
    assert await pool.fetchval("SELECT count(*) FROM reservations") == count
    assert await pool.fetchval("SELECT count(DISTINCT user_id) FROM reservations") == count
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == count
    assert (
        await pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'payment-events'") == count
    )
    assert await queue_depth(sqs, queues.dlq_url) == 0


async def test_the_poller_reports_the_age_of_the_front_of_the_queue(
    sqs: Any, queues: Queues, poller: Poller, pool: asyncpg.Pool
) -> None:
    registry = CollectorRegistry()
    oldest = Gauge("urr_worker_queue_oldest_age_seconds", "", registry=registry)
    oldest.set(-1)
    await send(sqs, queues, [("ev1:u1", reserve_body("u1", "A1"))])
    front = Poller(sqs, poller._queue, poller._settings, poller._executor, None, oldest)
    assert await front.poll_once() == (1, 0)
    age = registry.get_sample_value("urr_worker_queue_oldest_age_seconds")
    assert age is not None
    assert 0 <= age < 30


def test_the_oldest_age_is_taken_from_the_earliest_timestamp() -> None:
    messages: list[dict[str, Any]] = [
        {"Attributes": {"SentTimestamp": "4000"}},
        {"Attributes": {"SentTimestamp": "1500"}},
        {"Attributes": {"SentTimestamp": "later"}},
        {"Attributes": None},
        {},
    ]
    assert oldest_age_s(messages, now_ms=5000) == 3.5
    assert oldest_age_s([], now_ms=5000) == 0
    assert oldest_age_s([{"Attributes": {"SentTimestamp": "9000"}}], now_ms=5000) == 0


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["Attributes", "Body"]),
            st.none()
            | st.dictionaries(st.sampled_from(["SentTimestamp", "Other"]), st.text(max_size=15)),
        ),
        max_size=6,
    ),
    st.integers(min_value=0, max_value=2**45),
)
def test_the_oldest_age_never_raises_and_is_never_negative(
    messages: list[dict[str, Any]], now_ms: int
) -> None:
    assert oldest_age_s(messages, now_ms) >= 0
