"""One transaction per SQS batch: exact partial failures, a lost connection, FIFO groups."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import pytest

from urr_ticket_worker import handler
from urr_ticket_worker.batch import BatchItem, GroupGate, apply_batch
from urr_ticket_worker.local.poller import Poller
from urr_ticket_worker.messages import ReserveCommand, command_group_id
from urr_ticket_worker.settings import BookingSettings
from urr_ticket_worker.testing import Queues, make_settings, seed_event, send_fifo, sqs_record

pytestmark = pytest.mark.integration

#: Makes PostgreSQL refuse the reservation of any user whose id starts with ``fail-``, after
#: the message id has been recorded: a real statement error in the middle of a message.
FAILING_USERS = """
CREATE FUNCTION refuse_failing_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.user_id LIKE 'fail-%' THEN
    RAISE EXCEPTION 'refused for the test: %', NEW.user_id;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_failing_users BEFORE INSERT ON reservations
  FOR EACH ROW EXECUTE FUNCTION refuse_failing_users();
"""


def reserve(user: str, seat: str, event: str = "ev1") -> ReserveCommand:
    return ReserveCommand(
        reservation_id=uuid.uuid4(), event_id=event, user_id=user, seat_ids=[seat]
    )


def record(command: ReserveCommand) -> dict[str, Any]:
    return sqs_record(command.to_json().decode(), group=command_group_id(command))


def invoke(call: Any, records: list[dict[str, Any]]) -> list[str]:
    response = call(handler.lambda_handler, {"Records": records}, None)
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


@pytest.fixture
def call(lambda_thread: Any, postgres_dsn: str, pool: asyncpg.Pool) -> Any:
    lambda_thread(handler.configure, make_settings(postgres_dsn))
    return lambda_thread


async def written(pool: asyncpg.Pool) -> tuple[list[str], int, int, int]:
    """(users with a reservation, seat claims, outbox rows, processed message ids)."""
    users = [r["user_id"] for r in await pool.fetch("SELECT user_id FROM reservations")]
    claims = await pool.fetchval("SELECT count(*) FROM seat_claims")
    outbox = await pool.fetchval("SELECT count(*) FROM outbox")
    processed = await pool.fetchval("SELECT count(*) FROM processed_messages")
    return sorted(users), claims, outbox, processed


def test_a_group_gate_holds_only_the_failed_group() -> None:
    gate = GroupGate()
    gate.stop("ev1:u1")
    assert not gate.open("ev1:u1")
    assert gate.open("ev1:u2")
    assert gate.open("ev2:u1")


async def test_every_second_message_failing_reports_exactly_those_and_commits_the_rest(
    call: Any, pool: asyncpg.Pool
) -> None:
    await pool.execute(FAILING_USERS)
    commands = [
        reserve(f"fail-{i}" if i % 2 else f"user-{i}", seat)
        for i, seat in enumerate(["A1", "A2", "A3", "A4", "A5", "B1", "B2", "B3", "B4", "B5"])
    ]
    records = [record(c) for c in commands]
    failed = invoke(call, records)
    assert failed == [r["messageId"] for r in records[1::2]]
    users, claims, outbox, processed = await written(pool)
    assert users == sorted(f"user-{i}" for i in range(0, 10, 2))
    # Each failed message rolled back alone: no claim, no outbox row, no message id left.
    assert (claims, outbox, processed) == (5, 5, 5)
    # SQS redelivers the whole batch's failures (here with the fault gone) and only those.
    await pool.execute("DROP TRIGGER refuse_failing_users ON reservations")
    assert invoke(call, records[1::2]) == []
    # A late duplicate of the whole batch changes nothing.
    assert invoke(call, records) == []
    users, claims, outbox, processed = await written(pool)
    assert users == sorted(c.user_id for c in commands)
    assert (claims, outbox, processed) == (10, 10, 10)


async def test_a_connection_killed_mid_batch_loses_and_doubles_nothing(
    call: Any, pool: asyncpg.Pool
) -> None:
    """The worker's backend is terminated while the batch waits half way (PostgreSQL going
    away): nothing of the batch is written, every record is reported failed, and the
    redelivered batch is applied exactly once."""
    commands = [reserve(f"user-{i}", f"A{i + 1}") for i in range(5)]
    commands += [reserve(f"user-{i + 5}", f"B{i + 1}") for i in range(5)]
    records = [record(c) for c in commands]
    blocker = await pool.acquire()
    try:
        # Another session holds user-5's seat-limit lock: message 6 waits on it, 1-5 are done.
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "seat-limit:ev1\nuser-5"
        )
        invocation = asyncio.create_task(asyncio.to_thread(invoke, call, records))
        waiting = None
        deadline = time.monotonic() + 10
        while waiting is None and time.monotonic() < deadline:
            waiting = await pool.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(0.05)
        assert waiting is not None, "the batch never reached the blocked seat"
        # Five messages are in the open transaction, not committed.
        assert await pool.fetchval("SELECT count(*) FROM reservations") == 0
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", waiting)
        failed = await invocation
        await blocking.rollback()
    finally:
        await pool.release(blocker)
    assert failed == [r["messageId"] for r in records]
    assert await written(pool) == ([], 0, 0, 0)
    # The event source redelivers the batch; the pool replaces the dead connection.
    assert invoke(call, records) == []
    assert invoke(call, records) == []  # and once more, as a duplicate delivery
    users, claims, outbox, processed = await written(pool)
    assert users == sorted(c.user_id for c in commands)
    assert (claims, outbox, processed) == (10, 10, 10)


# --- through real SQS FIFO (moto) -----------------------------------------------------------


async def test_a_poison_message_holds_only_its_own_group(
    sqs: Any, queues: Queues, poller: Poller, pool: asyncpg.Pool
) -> None:
    """One buyer's poison message sits in the queue for its three receives; the other
    buyers of the same event are all applied meanwhile, batch after batch."""
    seats = await seed_event(pool, "ev1", rows=4, per_row=10)
    poison = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id="ev1", user_id="fail-0", seat_ids=["A1"]
    )
    await pool.execute(FAILING_USERS)
    others = [reserve(f"user-{i}", seat) for i, seat in enumerate(seats[1:31])]
    entries = [(command_group_id(poison), poison.to_json().decode())]
    entries += [(command_group_id(c), c.to_json().decode()) for c in others]
    assert len({group for group, _ in entries}) == len(entries)  # one group per buyer
    await send_fifo(sqs, queues, entries)
    # Four rounds of ten take 31 messages: the poison message fails in the first, the thirty
    # others all go through, none held behind it (with the event as the group, the poison's
    # failure would fail the rest of its batch and hold the event's queue behind it).
    applied_after: list[int] = []
    failures = 0
    for _ in range(4):
        _, failed = await poller.poll_once()
        failures += failed
        applied_after.append(await pool.fetchval("SELECT count(*) FROM reservations"))
    assert applied_after[-1] == len(others)
    assert failures >= 1
    # The poison message ends in the DLQ after its receives; nothing else does.
    deadline = time.monotonic() + 30
    dead: list[dict[str, Any]] = []
    while not dead and time.monotonic() < deadline:
        await poller.poll_once()
        received = await sqs.receive_message(QueueUrl=queues.dlq_url, MaxNumberOfMessages=10)
        dead = received.get("Messages", [])
    assert [m["Body"] for m in dead] == [poison.to_json().decode()]
    assert await pool.fetchval("SELECT count(*) FROM reservations") == len(others)


async def test_concurrent_batches_of_one_event_never_sell_a_seat_twice(pool: asyncpg.Pool) -> None:
    """Two workers apply batches of one event at once (what per-buyer groups allow), every
    seat wanted by two buyers, in opposite orders so the transactions can deadlock. A message
    whose statement PostgreSQL aborts fails alone and is redelivered; in the end each seat has
    one owner, the loser of each seat is declined, and nothing is written twice."""
    seats = [f"A{n}" for n in range(1, 6)] + [f"B{n}" for n in range(1, 6)]
    forward = [reserve(f"left-{i}", seat) for i, seat in enumerate(seats)]
    backward = [reserve(f"right-{i}", seat) for i, seat in enumerate(reversed(seats))]
    pending = [
        [BatchItem(str(uuid.uuid4()), command_group_id(c), c.to_json().decode()) for c in cmds]
        for cmds in (forward, backward)
    ]
    settings = BookingSettings()
    for _ in range(10):  # redeliveries, bounded
        outcomes = await asyncio.gather(*(apply_batch(pool, items, settings) for items in pending))
        pending = [
            [item for item in items if item.message_id in set(outcome.failed)]
            for items, outcome in zip(pending, outcomes, strict=True)
        ]
        if not any(pending):
            break
    assert not any(pending)
    claims = await pool.fetch("SELECT seat_id, reservation_id FROM seat_claims")
    assert sorted(r["seat_id"] for r in claims) == sorted(seats)  # one owner each
    rows = await pool.fetch("SELECT status, reason FROM reservations")
    assert len(rows) == 20
    assert sorted((r["status"], r["reason"]) for r in rows) == sorted(
        [("awaiting_payment", None)] * 10 + [("declined", "seat_unavailable")] * 10
    )
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox")]
    assert sorted(topics) == ["payment-events"] * 10 + ["reservation-events"] * 10
    assert await pool.fetchval("SELECT count(*) FROM processed_messages") == 20
