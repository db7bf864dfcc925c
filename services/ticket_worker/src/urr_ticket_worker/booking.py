"""Booking state changes, each in one PostgreSQL transaction with its outbox rows.

Every entry point first records the id of the message that caused it in
``processed_messages``: a redelivered message finds its id there and changes nothing. The
seat-claims primary key, not this code, is what makes selling a seat twice impossible.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import asyncpg

from urr_ticket_worker import outbox
from urr_ticket_worker.messages import (
    MEMBERSHIP_EVENTS,
    PAYMENT_EVENTS,
    RESERVATION_EVENTS,
    TRANSFER_EVENTS,
    CancelCommand,
    MembershipRecorded,
    OutcomeStatus,
    PaymentRequested,
    ReservationOutcome,
    ReserveCommand,
    TicketTransferred,
    TransferCommand,
    outcome_message_id,
)

if TYPE_CHECKING:
    from urr_ticket_worker.schema import Connection
    from urr_ticket_worker.settings import BookingSettings

#: ``processed_messages.consumer`` of the SQS worker.
SQS_CONSUMER = "sqs:ticket-events"

#: What applying a message did: changed state, found it already applied, or refused it
#: (valid message, but the state does not allow it; refusing is final, not retried).
Result = Literal["applied", "duplicate", "rejected"]
TERMINAL = frozenset({"confirmed", "declined", "expired", "cancelled"})
#: The decline reason of a reservation that would take the user past the event's
#: ``max_seats_per_user`` (the same code the API answers a hold over the cap with).
SEAT_LIMIT_REACHED = "seat_limit_reached"
#: Payment declines the buyer can try again while the seats are still held (issue 21): the
#: holds stay (they end with their own TTL or the Tier-2 session) and the session goes on.
RETRYABLE_DECLINES = frozenset({"card_declined"})
#: Payment attempts per hold: the first and up to four retries (the ticket API enforces it).
MAX_PAYMENT_ATTEMPTS = 5


async def claim_message(conn: Connection, consumer: str, message_id: str) -> bool:
    """Record ``message_id`` as processed by ``consumer``; False when it already was."""
    inserted = await conn.fetchval(
        "INSERT INTO processed_messages (consumer, message_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        consumer,
        message_id,
    )
    return inserted is not None


async def apply_command(
    pool: asyncpg.Pool,
    message_id: str,
    command: ReserveCommand | CancelCommand | TransferCommand,
    settings: BookingSettings,
) -> Result:
    """Apply one SQS booking command in one transaction, at most once per message id."""
    async with pool.acquire() as conn, conn.transaction():
        return await apply_command_in(conn, message_id, command, settings)


async def apply_command_in(
    conn: Connection,
    message_id: str,
    command: ReserveCommand | CancelCommand | TransferCommand,
    settings: BookingSettings,
) -> Result:
    """Apply one SQS booking command in the caller's transaction (or savepoint), at most once
    per message id; its outbox rows are written in the same transaction."""
    if isinstance(command, ReserveCommand):
        return await _reserve(conn, message_id, command, settings)
    if not await claim_message(conn, SQS_CONSUMER, message_id):
        return "duplicate"
    if isinstance(command, CancelCommand):
        return await _cancel(conn, command)
    return await _transfer(conn, command)


async def _reserve(
    conn: Connection, message_id: str, command: ReserveCommand, settings: BookingSettings
) -> Result:
    """Two statements when it succeeds (this is the hot path of a sale).

    The first records the message id, reads the event's cap and the seats' prices, writes the
    reservation (new, or the API's ``pending`` row) and takes the transaction-scoped advisory
    lock on (event, user). The second, so with a snapshot newer than that lock, counts the
    seats the user already bought in the event (awaiting payment or confirmed; those they
    transferred on included, those transferred to them not), claims the seats if the cap
    allows, and queues the payment request only when every seat was claimed. Two
    reservations of one account (two tabs, two devices) applied at the same time are thus
    counted one after the other and together never pass ``max_seats_per_user``; ``pending``
    rows are requests the worker has not accepted yet, each counted when its own turn comes.
    The seat_claims primary key decides conflicts: a seat another reservation holds is
    skipped (after waiting for that transaction), and then this reservation takes none."""
    first = await conn.fetchrow(
        "WITH claim AS (INSERT INTO processed_messages (consumer, message_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1),"
        " event AS (SELECT max_seats_per_user AS max_seats FROM booking_events"
        " WHERE event_id = $4),"
        " priced AS (SELECT count(*) AS known, coalesce(sum(price_cents), 0) AS amount"
        " FROM seats WHERE event_id = $4 AND seat_id = ANY($5::text[])),"
        " written AS (INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids,"
        " status, amount_cents, created_at, pay_by)"
        " SELECT $3, $4, $6, $5, 'awaiting_payment', priced.amount, $7, now() + $8::interval"
        " FROM priced WHERE EXISTS (SELECT 1 FROM claim) AND EXISTS (SELECT 1 FROM event)"
        " ON CONFLICT (reservation_id) DO UPDATE SET status = 'awaiting_payment',"
        " amount_cents = EXCLUDED.amount_cents, pay_by = EXCLUDED.pay_by, updated_at = now()"
        " WHERE reservations.status = 'pending' RETURNING 1),"
        " locked AS (SELECT pg_advisory_xact_lock(hashtextextended($9, 0)) FROM written)"
        " SELECT EXISTS (SELECT 1 FROM claim) AS claimed,"
        " (SELECT max_seats FROM event) AS max_seats,"
        " (SELECT known FROM priced) AS known, (SELECT amount FROM priced) AS amount,"
        " EXISTS (SELECT 1 FROM locked) AS written",
        SQS_CONSUMER,
        message_id,
        command.reservation_id,
        command.event_id,
        command.seat_ids,
        command.user_id,
        command.requested_at,
        timedelta(seconds=settings.payment_window_s),
        seat_limit_lock(command.event_id, command.user_id),
    )
    if first is None or not first["claimed"]:
        return "duplicate"
    if first["max_seats"] is None:
        return "rejected"  # no reservation row can name an unknown event
    if not first["written"]:
        return "duplicate"  # the same reservation arrived again under another message id
    reason: str | None = None
    if first["known"] != len(command.seat_ids):
        reason = "unknown_seat"
    else:
        amount = int(first["amount"])
        request = PaymentRequested(
            message_id=uuid.uuid5(command.reservation_id, "payment-requested"),
            reservation_id=command.reservation_id,
            event_id=command.event_id,
            user_id=command.user_id,
            seat_ids=command.seat_ids,
            amount_cents=amount,
        )
        second = await conn.fetchrow(
            "WITH owned AS (SELECT coalesce(sum(cardinality(seat_ids)), 0) AS seats"
            " FROM reservations WHERE event_id = $1 AND coalesce(bought_by, user_id) = $4"
            " AND reservation_id <> $3 AND status IN ('awaiting_payment', 'confirmed')),"
            " claimed AS (INSERT INTO seat_claims (event_id, seat_id, reservation_id)"
            " SELECT $1, seat, $3 FROM unnest($2::text[]) AS seat"
            " WHERE (SELECT seats FROM owned) + cardinality($2::text[]) <= $5"
            " ON CONFLICT DO NOTHING RETURNING seat_id),"
            " queued AS (INSERT INTO outbox (message_id, topic, key, payload)"
            " SELECT $6, $7, $8, $9::jsonb"
            " WHERE (SELECT count(*) FROM claimed) = cardinality($2::text[])"
            " ON CONFLICT (message_id) DO NOTHING)"
            " SELECT (SELECT seats FROM owned) AS owned, (SELECT count(*) FROM claimed) AS claimed",
            command.event_id,
            command.seat_ids,
            command.reservation_id,
            command.user_id,
            first["max_seats"],
            *outbox.row(PAYMENT_EVENTS, command.event_id, request),
        )
        if second is None or int(second["owned"]) + len(command.seat_ids) > first["max_seats"]:
            reason = SEAT_LIMIT_REACHED
        elif second["claimed"] != len(command.seat_ids):
            reason = "seat_unavailable"
    if reason is not None:
        await _finish(conn, command.reservation_id, "declined", reason)
        await _publish_outcome(conn, command, "declined", reason)
    return "applied"


def seat_limit_lock(event_id: str, user_id: str) -> str:
    """The text whose hash is the transaction-scoped advisory lock of (event, user)."""
    return f"seat-limit:{event_id}\n{user_id}"


async def _cancel(conn: Connection, command: CancelCommand) -> Result:
    row = await _locked_reservation(conn, command.reservation_id)
    if (
        row is None
        or row["user_id"] != command.user_id
        or row["status"] in TERMINAL - {"confirmed"}
    ):
        return "rejected"
    await _finish(conn, command.reservation_id, "cancelled", "cancelled_by_user")
    await _publish_outcome(conn, command, "cancelled", "cancelled_by_user")
    if row["status"] == "confirmed":
        await outbox.add(
            conn,
            MEMBERSHIP_EVENTS,
            command.event_id,
            MembershipRecorded(
                message_id=uuid.uuid5(command.reservation_id, "membership:cancelled"),
                type="purchase_cancelled",
                reservation_id=command.reservation_id,
                event_id=command.event_id,
                user_id=command.user_id,
                seats=len(row["seat_ids"]),
            ),
        )
    return "applied"


async def _transfer(conn: Connection, command: TransferCommand) -> Result:
    row = await _locked_reservation(conn, command.reservation_id)
    if (
        row is None
        or row["user_id"] != command.user_id
        or row["status"] != "confirmed"
        or command.to_user_id == command.user_id
    ):
        return "rejected"
    await conn.execute(
        "UPDATE reservations SET bought_by = coalesce(bought_by, user_id), user_id = $2,"
        " updated_at = now() WHERE reservation_id = $1",
        command.reservation_id,
        command.to_user_id,
    )
    await outbox.add(
        conn,
        TRANSFER_EVENTS,
        command.event_id,
        TicketTransferred(
            message_id=uuid.uuid4(),
            reservation_id=command.reservation_id,
            event_id=command.event_id,
            from_user_id=command.user_id,
            to_user_id=command.to_user_id,
            seat_ids=list(row["seat_ids"]),
        ),
    )
    return "applied"


async def _locked_reservation(conn: Connection, reservation_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT event_id, user_id, status, seat_ids FROM reservations"
        " WHERE reservation_id = $1 FOR UPDATE",
        reservation_id,
    )
    return row


async def _finish(
    conn: Connection, reservation_id: uuid.UUID, status: str, reason: str | None
) -> None:
    """Move to a final status that gives the seats back."""
    await conn.execute("DELETE FROM seat_claims WHERE reservation_id = $1", reservation_id)
    await conn.execute(
        "UPDATE reservations SET status = $2, reason = $3, pay_by = NULL, updated_at = now()"
        " WHERE reservation_id = $1",
        reservation_id,
        status,
        reason,
    )


async def _publish_outcome(
    conn: Connection,
    command: ReserveCommand | CancelCommand,
    status: OutcomeStatus,
    reason: str | None,
) -> None:
    await outbox.add(
        conn,
        RESERVATION_EVENTS,
        command.event_id,
        ReservationOutcome(
            message_id=outcome_message_id(command.reservation_id, status),
            event_id=command.event_id,
            user_id=command.user_id,
            reservation_id=command.reservation_id,
            status=status,
            reason=reason,
        ),
    )


# --- reservation-events (payment -> ticket) -----------------------------------------------


@dataclass(frozen=True)
class OutcomeApplied:
    """What the outcome consumer did, and what it must still do outside the database."""

    result: Result
    #: Seats whose Redis holds (owned by ``user_id``) can be released now.
    release_seats: tuple[str, ...] = ()
    user_id: str | None = None


async def apply_outcome(
    pool: asyncpg.Pool, consumer: str, outcome: ReservationOutcome
) -> OutcomeApplied:
    """Confirm or decline a reservation awaiting payment; records we wrote ourselves
    (cancelled, expired) find the reservation already final and only free the holds."""
    async with pool.acquire() as conn, conn.transaction():
        if not await claim_message(conn, consumer, str(outcome.message_id)):
            return OutcomeApplied("duplicate")
        row = await _locked_reservation(conn, outcome.reservation_id)
        if row is None or row["event_id"] != outcome.event_id:
            return OutcomeApplied("rejected")
        status = row["status"]
        if status == "awaiting_payment" and outcome.status in ("confirmed", "declined"):
            if outcome.status == "confirmed":
                await _confirm(conn, outcome, len(row["seat_ids"]), row["user_id"])
            else:
                await _finish(conn, outcome.reservation_id, "declined", outcome.reason)
            status = outcome.status
        elif status != outcome.status:
            # Stale or contradicting (a payment answer after expiry): the first final
            # status wins; nothing changes.
            return OutcomeApplied("rejected")
        if outcome.status == "declined" and outcome.reason in RETRYABLE_DECLINES:
            # The seat claims are gone (a retry claims again), the buyer's holds are not.
            return OutcomeApplied("applied", user_id=row["user_id"])
        return OutcomeApplied(
            "applied", release_seats=tuple(row["seat_ids"]), user_id=row["user_id"]
        )


async def _confirm(conn: Connection, outcome: ReservationOutcome, seats: int, user_id: str) -> None:
    await conn.execute(
        "UPDATE reservations SET status = 'confirmed', reason = NULL, pay_by = NULL,"
        " updated_at = now() WHERE reservation_id = $1",
        outcome.reservation_id,
    )
    await outbox.add(
        conn,
        MEMBERSHIP_EVENTS,
        outcome.event_id,
        MembershipRecorded(
            message_id=uuid.uuid5(outcome.reservation_id, "membership:confirmed"),
            type="purchase_confirmed",
            reservation_id=outcome.reservation_id,
            event_id=outcome.event_id,
            user_id=user_id,
            seats=seats,
        ),
    )


# --- expiry ---------------------------------------------------------------------------------


async def expire_overdue(pool: asyncpg.Pool, *, limit: int = 100) -> int:
    """Expire reservations past their deadline (payment never answered, or the request never
    reached the worker), free their seats, and announce it on ``reservation-events``."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT reservation_id, event_id, user_id, status FROM reservations"
            " WHERE status IN ('pending', 'awaiting_payment') AND pay_by < now()"
            " ORDER BY pay_by LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
        for row in rows:
            reason = "payment_timeout" if row["status"] == "awaiting_payment" else "not_processed"
            await _finish(conn, row["reservation_id"], "expired", reason)
            await outbox.add(
                conn,
                RESERVATION_EVENTS,
                row["event_id"],
                ReservationOutcome(
                    message_id=outcome_message_id(row["reservation_id"], "expired"),
                    event_id=row["event_id"],
                    user_id=row["user_id"],
                    reservation_id=row["reservation_id"],
                    status="expired",
                    reason=reason,
                ),
            )
    return len(rows)


# --- stats ----------------------------------------------------------------------------------


async def count_many(
    pool: asyncpg.Pool, consumer: str, items: Sequence[tuple[str, str, list[str]]]
) -> list[Result]:
    """Add one to each of the counters of every ``(message id, event id, counters)``, once
    per message id, in one transaction.

    One commit for a whole fetch instead of one per record: every commit waits for the WAL's
    fsync, and a crowd's queue events (several per arrival) made the stats consumer the
    busiest committer, which put the booking API's own commits in line behind it (the
    reservation route's P95 on a slow disk). The claims and the counts commit together, so
    a failure leaves none of them and the whole batch is retried. An id seen twice in one
    batch counts once, like an id already claimed by an earlier batch.
    """
    if not items:
        return []
    async with pool.acquire() as conn, conn.transaction():
        fresh = {
            row["message_id"]
            for row in await conn.fetch(
                "INSERT INTO processed_messages (consumer, message_id)"
                " SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING RETURNING message_id",
                consumer,
                [message_id for message_id, _, _ in items],
            )
        }
        totals: dict[tuple[str, str], int] = {}
        results: list[Result] = []
        for message_id, event_id, counters in items:
            if message_id not in fresh:
                results.append("duplicate")
                continue
            fresh.discard(message_id)  # a second copy in this batch is a duplicate
            results.append("applied")
            for counter in counters:
                totals[(event_id, counter)] = totals.get((event_id, counter), 0) + 1
        if totals:
            # In key order, so two writers never wait on each other's rows in a cycle.
            await conn.executemany(
                "INSERT INTO event_stats (event_id, counter, value) VALUES ($1, $2, $3)"
                " ON CONFLICT (event_id, counter) DO UPDATE"
                " SET value = event_stats.value + EXCLUDED.value, updated_at = now()",
                [(event_id, counter, n) for (event_id, counter), n in sorted(totals.items())],
            )
    return results
