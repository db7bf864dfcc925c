"""Payment outcomes and expiry on a real PostgreSQL: first final status wins, seats free up,
every final status is announced on reservation-events."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from urr_ticket_worker.booking import apply_command, apply_outcome, expire_overdue
from urr_ticket_worker.messages import ReservationOutcome, ReserveCommand, outcome_message_id
from urr_ticket_worker.settings import BookingSettings

pytestmark = pytest.mark.integration
CONSUMER = "test-outcomes"


async def awaiting(pool: asyncpg.Pool, user: str, seats: list[str]) -> ReserveCommand:
    command = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id="ev1", user_id=user, seat_ids=seats
    )
    assert await apply_command(pool, uuid.uuid4().hex, command, BookingSettings()) == "applied"
    return command


def outcome(command: ReserveCommand, status: str) -> ReservationOutcome:
    return ReservationOutcome.model_validate(
        {
            "messageId": str(outcome_message_id(command.reservation_id, status)),
            "eventId": command.event_id,
            "userId": command.user_id,
            "reservationId": str(command.reservation_id),
            "status": status,
        }
    )


async def test_a_decline_frees_the_seats_once(pool: asyncpg.Pool) -> None:
    command = await awaiting(pool, "u1", ["A1", "A2"])
    first = await apply_outcome(pool, CONSUMER, outcome(command, "declined"))
    assert first.result == "applied"
    assert sorted(first.release_seats) == ["A1", "A2"]
    assert first.user_id == "u1"
    assert (await apply_outcome(pool, CONSUMER, outcome(command, "declined"))).result == "duplicate"
    assert await pool.fetchval("SELECT status FROM reservations") == "declined"
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 0
    # The seats can be sold again.
    await awaiting(pool, "u2", ["A1"])
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 1


async def test_a_declined_card_frees_the_claims_but_keeps_the_holds_for_a_retry(
    pool: asyncpg.Pool,
) -> None:
    """Issue 21: the buyer may pay again while the seats are held by them."""
    command = await awaiting(pool, "u1", ["B1"])
    declined = outcome(command, "declined").model_copy(update={"reason": "card_declined"})
    applied = await apply_outcome(pool, CONSUMER, declined)
    assert applied.result == "applied"
    assert applied.release_seats == ()
    assert await pool.fetchval("SELECT reason FROM reservations") == "card_declined"
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 0
    # The retry (a new reservation of the same seat) claims it again.
    await awaiting(pool, "u1", ["B1"])
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 1


async def test_a_confirmation_records_membership_and_a_late_decline_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    command = await awaiting(pool, "u1", ["B1"])
    assert (await apply_outcome(pool, CONSUMER, outcome(command, "confirmed"))).result == "applied"
    assert (await apply_outcome(pool, CONSUMER, outcome(command, "declined"))).result == "rejected"
    assert await pool.fetchval("SELECT status FROM reservations") == "confirmed"
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 1
    topics = [r["topic"] for r in await pool.fetch("SELECT topic FROM outbox ORDER BY id")]
    assert topics == ["payment-events", "membership-events"]


async def test_unknown_reservations_are_refused(pool: asyncpg.Pool) -> None:
    stranger = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id="ev1", user_id="u1", seat_ids=["A1"]
    )
    assert (
        await apply_outcome(pool, CONSUMER, outcome(stranger, "confirmed"))
    ).result == "rejected"


async def test_overdue_reservations_expire_and_are_announced(pool: asyncpg.Pool) -> None:
    late = await awaiting(pool, "u1", ["A3"])
    await awaiting(pool, "u2", ["A4"])
    never_processed = uuid.uuid4()
    await pool.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status, pay_by)"
        " VALUES ($1, 'ev1', 'u3', ARRAY['A5'], 'pending', now() - interval '1 second')",
        never_processed,
    )
    await pool.execute(
        "UPDATE reservations SET pay_by = now() - interval '1 second' WHERE reservation_id = $1",
        late.reservation_id,
    )
    assert await expire_overdue(pool) == 2
    assert await expire_overdue(pool) == 0
    statuses = {
        r["user_id"]: (r["status"], r["reason"])
        for r in await pool.fetch("SELECT user_id, status, reason FROM reservations")
    }
    assert statuses == {
        "u1": ("expired", "payment_timeout"),
        "u2": ("awaiting_payment", None),
        "u3": ("expired", "not_processed"),
    }
    claims = [r["seat_id"] for r in await pool.fetch("SELECT seat_id FROM seat_claims")]
    assert claims == ["A4"]
    announced = await pool.fetch(
        "SELECT payload->>'userId' AS user_id FROM outbox"
        " WHERE topic = 'reservation-events' AND payload->>'status' = 'expired'"
    )
    assert sorted(r["user_id"] for r in announced) == ["u1", "u3"]
    # The payment answer arriving after expiry changes nothing.
    assert (await apply_outcome(pool, CONSUMER, outcome(late, "confirmed"))).result == "rejected"
    # Our own expired record coming back through Kafka only frees the holds.
    back = await apply_outcome(pool, CONSUMER, outcome(late, "expired"))
    assert back.result == "applied"
    assert back.release_seats == ("A3",)
