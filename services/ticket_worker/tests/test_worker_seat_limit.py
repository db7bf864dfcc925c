"""The per-account seat cap in the booking transaction (issue 15): reservations awaiting
payment and confirmed ones count together against the event's ``max_seats_per_user``, and two
reservations of one account applied at the same moment cannot pass it together."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from urr_ticket_worker.booking import SEAT_LIMIT_REACHED, apply_command, apply_outcome
from urr_ticket_worker.messages import (
    CancelCommand,
    ReservationOutcome,
    ReserveCommand,
    TransferCommand,
    outcome_message_id,
)
from urr_ticket_worker.settings import BookingSettings

pytestmark = pytest.mark.integration


def reserve(user: str, seats: list[str]) -> ReserveCommand:
    return ReserveCommand(reservation_id=uuid.uuid4(), event_id="ev1", user_id=user, seat_ids=seats)


async def apply(
    pool: asyncpg.Pool, command: ReserveCommand | CancelCommand | TransferCommand
) -> str:
    return await apply_command(pool, uuid.uuid4().hex, command, BookingSettings())


async def statuses(pool: asyncpg.Pool) -> dict[uuid.UUID, tuple[str, str | None]]:
    rows = await pool.fetch("SELECT reservation_id, status, reason FROM reservations")
    return {r["reservation_id"]: (r["status"], r["reason"]) for r in rows}


async def test_two_sessions_reserving_at_once_never_pass_the_cap(pool: asyncpg.Pool) -> None:
    # Five rounds of two reservations of 3 seats each for one account (cap 4), applied
    # concurrently in separate transactions: exactly one of each pair goes through.
    for rounds in range(5):
        user = f"scalper-{rounds}"
        first, second = reserve(user, ["A1", "A2", "A3"]), reserve(user, ["B1", "B2", "B3"])
        results = await asyncio.gather(apply(pool, first), apply(pool, second))
        assert list(results) == ["applied", "applied"]
        found = await statuses(pool)
        outcome = sorted([found[first.reservation_id], found[second.reservation_id]])
        assert outcome == [("awaiting_payment", None), ("declined", SEAT_LIMIT_REACHED)]
        owned = await pool.fetchval(
            "SELECT count(*) FROM seat_claims c JOIN reservations r USING (reservation_id)"
            " WHERE r.user_id = $1",
            user,
        )
        assert owned == 3
        # The declined one is announced with its reason (the user learns why).
        reason = await pool.fetchval(
            "SELECT payload->>'reason' FROM outbox WHERE topic = 'reservation-events'"
            " AND payload->>'reservationId' = $1",
            str(
                next(
                    c for c in (first, second) if found[c.reservation_id][0] == "declined"
                ).reservation_id
            ),
        )
        assert reason == SEAT_LIMIT_REACHED
        await pool.execute("DELETE FROM seat_claims")
        await pool.execute("UPDATE reservations SET status = 'cancelled'")


async def test_confirmed_purchases_count_and_cancelled_ones_do_not(pool: asyncpg.Pool) -> None:
    bought = reserve("u1", ["A1", "A2"])
    assert await apply(pool, bought) == "applied"
    confirmed = ReservationOutcome(
        message_id=outcome_message_id(bought.reservation_id, "confirmed"),
        event_id="ev1",
        user_id="u1",
        reservation_id=bought.reservation_id,
        status="confirmed",
    )
    assert (await apply_outcome(pool, "test", confirmed)).result == "applied"
    too_many = reserve("u1", ["B1", "B2", "B3"])
    assert await apply(pool, too_many) == "applied"
    assert (await statuses(pool))[too_many.reservation_id] == ("declined", SEAT_LIMIT_REACHED)
    up_to_the_cap = reserve("u1", ["B1", "B2"])
    assert await apply(pool, up_to_the_cap) == "applied"
    assert (await statuses(pool))[up_to_the_cap.reservation_id] == ("awaiting_payment", None)
    # Another account is not affected by u1's purchases.
    other = reserve("u2", ["A3", "A4", "A5", "B3"])
    assert await apply(pool, other) == "applied"
    assert (await statuses(pool))[other.reservation_id] == ("awaiting_payment", None)
    # Cancelling gives the seats back to u1's allowance.
    cancel = CancelCommand(reservation_id=bought.reservation_id, event_id="ev1", user_id="u1")
    assert await apply(pool, cancel) == "applied"
    again = reserve("u1", ["A1", "A2"])
    assert await apply(pool, again) == "applied"
    assert (await statuses(pool))[again.reservation_id] == ("awaiting_payment", None)


async def test_passing_tickets_on_does_not_free_the_buyers_allowance(
    pool: asyncpg.Pool,
) -> None:
    bought = reserve("u1", ["A1", "A2", "A3", "A4"])
    assert await apply(pool, bought) == "applied"
    confirmed = ReservationOutcome(
        message_id=outcome_message_id(bought.reservation_id, "confirmed"),
        event_id="ev1",
        user_id="u1",
        reservation_id=bought.reservation_id,
        status="confirmed",
    )
    assert (await apply_outcome(pool, "test", confirmed)).result == "applied"
    handed_on = TransferCommand(
        reservation_id=bought.reservation_id, event_id="ev1", user_id="u1", to_user_id="u2"
    )
    assert await apply(pool, handed_on) == "applied"
    row = await pool.fetchrow("SELECT user_id, bought_by FROM reservations")
    assert row is not None
    assert (row["user_id"], row["bought_by"]) == ("u2", "u1")
    # u1 bought four already: the transfer does not let u1 buy more.
    more = reserve("u1", ["B1"])
    assert await apply(pool, more) == "applied"
    assert (await statuses(pool))[more.reservation_id] == ("declined", SEAT_LIMIT_REACHED)
    # The recipient's own allowance is untouched by what they were given.
    own = reserve("u2", ["B1", "B2", "B3", "B4"])
    assert await apply(pool, own) == "applied"
    assert (await statuses(pool))[own.reservation_id] == ("awaiting_payment", None)


async def test_the_cap_is_per_event(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE booking_events SET max_seats_per_user = 1 WHERE event_id = 'ev1'")
    pair = reserve("u1", ["A1", "A2"])
    assert await apply(pool, pair) == "applied"
    assert (await statuses(pool))[pair.reservation_id] == ("declined", SEAT_LIMIT_REACHED)
    assert await pool.fetchval("SELECT count(*) FROM seat_claims") == 0
    single = reserve("u1", ["A1"])
    assert await apply(pool, single) == "applied"
    assert (await statuses(pool))[single.reservation_id] == ("awaiting_payment", None)


async def test_a_reservation_for_an_unknown_event_writes_nothing(pool: asyncpg.Pool) -> None:
    command = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id="nope", user_id="u1", seat_ids=["A1"]
    )
    assert await apply(pool, command) == "rejected"
    assert await pool.fetchval("SELECT count(*) FROM reservations") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_the_schema_refuses_a_cap_out_of_range(pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE booking_events SET max_seats_per_user = 0")
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("UPDATE booking_events SET hold_seconds = 1")
