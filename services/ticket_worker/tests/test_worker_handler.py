"""The SQS FIFO handler against a real PostgreSQL: idempotency, constraints, FIFO failures."""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from urr_ticket_worker import handler
from urr_ticket_worker.messages import CancelCommand, ReserveCommand, TransferCommand
from urr_ticket_worker.metrics import WorkerMetrics, batch_result, queue_waits
from urr_ticket_worker.testing import make_settings, sqs_record

pytestmark = pytest.mark.integration


def reserve(user: str, seats: list[str], event: str = "ev1") -> ReserveCommand:
    return ReserveCommand(reservation_id=uuid.uuid4(), event_id=event, user_id=user, seat_ids=seats)


def invoke(call: Any, *records: dict[str, Any]) -> list[str]:
    """Invoke the Lambda handler in its thread; the ids it reports failed."""
    response = call(handler.lambda_handler, {"Records": list(records)}, None)
    return [item["itemIdentifier"] for item in response["batchItemFailures"]]


@pytest.fixture
def call(lambda_thread: Any, postgres_dsn: str, pool: asyncpg.Pool) -> Any:
    lambda_thread(handler.configure, make_settings(postgres_dsn))
    return lambda_thread


async def test_the_same_message_twice_makes_one_reservation(call: Any, pool: asyncpg.Pool) -> None:
    command = reserve("u1", ["A1", "A2"])
    record = sqs_record(command.to_json().decode())
    assert invoke(call, record) == []
    assert invoke(call, record) == []  # redelivery (same message id)
    # The same command re-sent as a new message (another message id) changes nothing either.
    assert invoke(call, sqs_record(command.to_json().decode())) == []
    rows = await pool.fetch("SELECT status, amount_cents FROM reservations")
    assert [(r["status"], r["amount_cents"]) for r in rows] == [("awaiting_payment", 2000)]
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 2
    outbox = await pool.fetch("SELECT topic, payload FROM outbox")
    assert [r["topic"] for r in outbox] == ["payment-events"]


async def test_a_seat_is_never_sold_twice(call: Any, pool: asyncpg.Pool) -> None:
    first, second = reserve("u1", ["A1", "A2"]), reserve("u2", ["A2", "A3"])
    assert (
        invoke(call, sqs_record(first.to_json().decode()), sqs_record(second.to_json().decode()))
        == []
    )
    rows = await pool.fetch("SELECT user_id, status FROM reservations")
    statuses = {r["user_id"]: r["status"] for r in rows}
    assert statuses == {"u1": "awaiting_payment", "u2": "declined"}
    claims = await pool.fetch("SELECT seat_id FROM seat_claims ORDER BY seat_id")
    assert [r["seat_id"] for r in claims] == ["A1", "A2"]
    declined = await pool.fetchval(
        "SELECT payload->>'status' FROM outbox WHERE topic = 'reservation-events'"
    )
    assert declined == "declined"
    # The guarantee is the database's, not only the code's:
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(
            "INSERT INTO seat_claims (event_id, seat_id, reservation_id) VALUES ('ev1', 'A1', $1)",
            second.reservation_id,
        )


async def test_unknown_seats_decline_and_unknown_events_are_refused(
    call: Any, pool: asyncpg.Pool
) -> None:
    assert invoke(call, sqs_record(reserve("u1", ["Z9"]).to_json().decode())) == []
    assert (
        invoke(
            call, sqs_record(reserve("u1", ["A1"], event="nope").to_json().decode(), group="nope")
        )
        == []
    )
    rows = await pool.fetch("SELECT event_id, status, reason FROM reservations")
    assert [tuple(r) for r in rows] == [("ev1", "declined", "unknown_seat")]


async def test_malformed_body_fails_only_its_group_from_there_on(
    call: Any, pool: asyncpg.Pool
) -> None:
    good_a1 = sqs_record(reserve("u1", ["A1"]).to_json().decode(), group="ev1")
    poison = sqs_record('{"type": "reserve", "eventId": 7}', group="ev1")
    after_poison = sqs_record(reserve("u2", ["A2"]).to_json().decode(), group="ev1")
    other_group = sqs_record(reserve("u3", ["B1"]).to_json().decode(), group="ev2")
    not_json = sqs_record("\x00not json", group="ev3")
    failed = invoke(call, good_a1, poison, after_poison, other_group, not_json)
    assert failed == [poison["messageId"], after_poison["messageId"], not_json["messageId"]]
    users = {r["user_id"] for r in await pool.fetch("SELECT user_id FROM reservations")}
    assert users == {"u1", "u3"}  # u2 waits behind the poison message of its group


async def test_order_per_group_holds_across_redeliveries(call: Any, pool: asyncpg.Pool) -> None:
    """The delivery sequence of real SQS FIFO: failed records come back, in order, until the
    poison one is moved to the DLQ; the group's later records are applied after it, in order."""
    first = sqs_record(reserve("u1", ["A1"]).to_json().decode())
    poison = sqs_record("{}")
    second = sqs_record(reserve("u2", ["A2"]).to_json().decode())
    third = sqs_record(reserve("u3", ["A3"]).to_json().decode())
    failed = invoke(call, first, poison, second, third)
    assert failed == [poison["messageId"], second["messageId"], third["messageId"]]
    for receive in (2, 3):
        again = [
            dict(r, attributes={**r["attributes"], "ApproximateReceiveCount": str(receive)})
            for r in (poison, second, third)
        ]
        assert invoke(call, *again) == [
            poison["messageId"],
            second["messageId"],
            third["messageId"],
        ]
        assert await pool.fetchval("SELECT count(*) FROM reservations") == 1
    # maxReceiveCount reached: SQS moves the poison message to the DLQ; the rest follows.
    assert invoke(call, second, third) == []
    rows = await pool.fetch("SELECT user_id FROM reservations ORDER BY updated_at")
    assert [r["user_id"] for r in rows] == ["u1", "u2", "u3"]


async def test_every_record_failing_is_reported_not_raised(call: Any) -> None:
    records = [sqs_record("[]"), sqs_record("null", group="g2")]
    assert invoke(call, *records) == [r["messageId"] for r in records]


async def test_cancel_frees_the_seats_and_announces_it(call: Any, pool: asyncpg.Pool) -> None:
    command = reserve("u1", ["A1"])
    cancel = CancelCommand(reservation_id=command.reservation_id, event_id="ev1", user_id="u1")
    foreign = CancelCommand(reservation_id=command.reservation_id, event_id="ev1", user_id="u2")
    invoke(call, sqs_record(command.to_json().decode()), sqs_record(foreign.to_json().decode()))
    assert await pool.fetchval("SELECT status FROM reservations") == "awaiting_payment"
    invoke(call, sqs_record(cancel.to_json().decode()))
    assert await pool.fetchval("SELECT status FROM reservations") == "cancelled"
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 0
    outcome = await pool.fetchval("SELECT payload FROM outbox WHERE topic = 'reservation-events'")
    assert '"status": "cancelled"' in outcome
    # The reservation arriving again later (a redrive from the DLQ) changes nothing.
    invoke(call, sqs_record(command.to_json().decode()))
    assert await pool.fetchval("SELECT status FROM reservations") == "cancelled"


async def test_transfer_moves_a_confirmed_reservation(call: Any, pool: asyncpg.Pool) -> None:
    command = reserve("u1", ["A1"])
    invoke(call, sqs_record(command.to_json().decode()))
    move = TransferCommand(
        reservation_id=command.reservation_id, event_id="ev1", user_id="u1", to_user_id="u9"
    )
    invoke(call, sqs_record(move.to_json().decode()))  # not confirmed yet: refused
    assert await pool.fetchval("SELECT user_id FROM reservations") == "u1"
    await pool.execute("UPDATE reservations SET status = 'confirmed'")
    invoke(call, sqs_record(move.to_json().decode()))
    assert await pool.fetchval("SELECT user_id FROM reservations") == "u9"
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY id")]
    assert topics == ["payment-events", "transfer-events"]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_each_batch_is_counted_by_result_with_its_latency(
    lambda_thread: Any, postgres_dsn: str, pool: asyncpg.Pool
) -> None:
    registry = CollectorRegistry()
    lambda_thread(handler.configure, make_settings(postgres_dsn), WorkerMetrics(registry))
    command = reserve("u1", ["A1"])
    sent = str(time.time_ns() // 1_000_000 - 2_000)  # two seconds on the queue
    fresh = sqs_record(command.to_json().decode(), group="ev1:u1")
    fresh["attributes"]["SentTimestamp"] = sent
    again = sqs_record(command.to_json().decode(), group="ev1:u1")
    poison = sqs_record("{not json", group="ev1:u2")
    assert invoke(lambda_thread, fresh, again, poison) == [poison["messageId"]]
    assert invoke(lambda_thread, sqs_record("[]", group="ev1:u3")) != []

    assert _sample(registry, "urr_worker_batches_total", result="partial") == 1
    assert _sample(registry, "urr_worker_batches_total", result="failed") == 1
    assert _sample(registry, "urr_worker_batches_total", result="ok") == 0
    assert _sample(registry, "urr_worker_messages_total", result="applied") == 1
    assert _sample(registry, "urr_worker_messages_total", result="duplicate") == 1
    assert _sample(registry, "urr_worker_messages_total", result="failed") == 2
    assert _sample(registry, "urr_worker_batch_seconds_count") == 2
    # Four records with a timestamp: the one sent two seconds ago lands in the 2.5 s bucket,
    # the others carry the helper's fixed 2023 timestamp (past every bucket).
    assert _sample(registry, "urr_worker_message_wait_seconds_count") == 4
    assert _sample(registry, "urr_worker_message_wait_seconds_bucket", le="1.0") == 0
    assert _sample(registry, "urr_worker_message_wait_seconds_bucket", le="2.5") == 1
    assert _sample(registry, "urr_worker_message_wait_seconds_bucket", le="1800.0") == 1


def test_batch_results_and_queue_waits_are_plain_arithmetic() -> None:
    assert [batch_result(10, n) for n in (0, 1, 9, 10)] == ["ok", "partial", "partial", "failed"]
    records: list[dict[str, object]] = [
        {"attributes": {"SentTimestamp": "1000"}},
        {"attributes": {"SentTimestamp": "5000"}},  # later than "now": no negative wait
        {"attributes": {"SentTimestamp": "soon"}},
        {"attributes": "nope"},
        {},
    ]
    assert queue_waits(records, now_ms=3000) == [2.0, 0.0]


@given(st.lists(st.dictionaries(st.text(max_size=12), st.text(max_size=12)), max_size=5))
def test_queue_waits_never_raise_on_odd_attributes(attributes: list[dict[str, str]]) -> None:
    waits = queue_waits([{"attributes": a} for a in attributes], now_ms=10**13)
    assert len(waits) <= len(attributes)
    assert all(w >= 0 for w in waits)
