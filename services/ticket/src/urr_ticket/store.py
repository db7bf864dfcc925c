"""Reads of the booking database for the API, and the one write it makes (a ``pending``
reservation row, written before the command is sent, so its status is known before the worker
has run; removed again when the send fails)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg


@dataclass(frozen=True)
class SeatRow:
    seat_id: str
    row_label: str
    seat_number: int
    price_cents: int
    #: Status of the live reservation claiming it (awaiting_payment or confirmed), if any.
    claim_status: str | None


@dataclass(frozen=True)
class SeatClaims:
    """What a seat map reads per request: the version of the event's seat catalogue and its
    claimed seats, all as of one statement."""

    #: Changes with every change to the event's seats (``booking_events.seats_version``).
    seats_version: uuid.UUID
    #: Seats of confirmed reservations.
    sold: frozenset[str]
    #: Seats claimed by a reservation not confirmed yet (awaiting payment).
    claimed: frozenset[str]


@dataclass(frozen=True)
class ReservationRow:
    reservation_id: uuid.UUID
    event_id: str
    user_id: str
    seat_ids: list[str]
    status: str
    reason: str | None
    amount_cents: int
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "reservationId": str(self.reservation_id),
            "eventId": self.event_id,
            "userId": self.user_id,
            "seatIds": self.seat_ids,
            "status": self.status,
            "reason": self.reason,
            "amountCents": self.amount_cents,
            "createdAt": self.created_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class HoldContext:
    """What a seat hold needs from the catalog, in one round trip."""

    #: Status of the live reservation claiming the seat (awaiting_payment or confirmed).
    claim_status: str | None
    max_seats_per_user: int
    hold_seconds: int
    #: Seats the user bought in live reservations of the event (pending, awaiting payment,
    #: confirmed; transferred on or not): they count towards ``max_seats_per_user`` with the
    #: holds.
    reserved_seat_ids: list[str]


@dataclass(frozen=True)
class PendingInsert:
    """What ``insert_pending`` found: whether it wrote the row, and the status of the row
    that was already there when it did not."""

    inserted: bool
    existing_status: str | None


@dataclass(frozen=True)
class PendingRow:
    """The ``pending`` reservation row a request writes before its command is sent."""

    reservation_id: uuid.UUID
    event_id: str
    user_id: str
    seat_ids: Sequence[str]
    requested_at: datetime
    #: How long it may stay ``pending`` (its ``pay_by`` is ``requested_at`` + this).
    pending_window_s: int

    def arguments(self) -> tuple[Any, ...]:
        """$1-$6 of the statements that write it."""
        return (
            self.reservation_id,
            self.event_id,
            self.user_id,
            list(self.seat_ids),
            self.requested_at,
            timedelta(seconds=self.pending_window_s),
        )


class UserDirectoryUnavailable(RuntimeError):
    """The users table cannot be read (the auth schema is missing or unreachable)."""


class BookingStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def events(self) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            _EVENTS_SELECT + " ORDER BY e.starts_at NULLS LAST, e.event_id"
        )
        return [_event_json(row) for row in rows]

    async def event(self, event_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            _EVENTS_SELECT + " WHERE e.event_id = $1",
            event_id,
        )
        return None if row is None else _event_json(row)

    async def seats(self, event_id: str, seat_ids: Sequence[str] | None = None) -> list[SeatRow]:
        """Seats of the event (all, or those among ``seat_ids``) with their claim status."""
        rows = await self.pool.fetch(
            "SELECT s.seat_id, s.row_label, s.seat_number, s.price_cents, r.status AS claim"
            " FROM seats s"
            " LEFT JOIN seat_claims c ON c.event_id = s.event_id AND c.seat_id = s.seat_id"
            " LEFT JOIN reservations r ON r.reservation_id = c.reservation_id"
            " WHERE s.event_id = $1 AND ($2::text[] IS NULL OR s.seat_id = ANY($2::text[]))"
            " ORDER BY s.row_label, s.seat_number, s.seat_id",
            event_id,
            list(seat_ids) if seat_ids is not None else None,
        )
        return [
            SeatRow(r["seat_id"], r["row_label"], r["seat_number"], r["price_cents"], r["claim"])
            for r in rows
        ]

    async def seat_claims(self, event_id: str) -> SeatClaims | None:
        """The event's catalogue version and claimed seats in one row; None when there is no
        such event."""
        row = await self.pool.fetchrow(
            "SELECT e.seats_version,"
            " array_agg(c.seat_id) FILTER (WHERE r.status = 'confirmed') AS sold,"
            " array_agg(c.seat_id) FILTER (WHERE r.status <> 'confirmed') AS claimed"
            " FROM booking_events e"
            " LEFT JOIN seat_claims c ON c.event_id = e.event_id"
            " LEFT JOIN reservations r ON r.reservation_id = c.reservation_id"
            " WHERE e.event_id = $1 GROUP BY e.event_id",
            event_id,
        )
        if row is None:
            return None
        return SeatClaims(
            row["seats_version"], frozenset(row["sold"] or ()), frozenset(row["claimed"] or ())
        )

    async def seat_catalog(self, event_id: str) -> tuple[uuid.UUID, list[SeatRow]] | None:
        """The event's catalogue version and every seat with its claim status, as of one
        statement (what ``seats`` reads, and the version it is); None when there is no such
        event."""
        rows = await self.pool.fetch(
            "SELECT e.seats_version, s.seat_id, s.row_label, s.seat_number, s.price_cents,"
            " r.status AS claim"
            " FROM booking_events e"
            " LEFT JOIN seats s ON s.event_id = e.event_id"
            " LEFT JOIN seat_claims c ON c.event_id = s.event_id AND c.seat_id = s.seat_id"
            " LEFT JOIN reservations r ON r.reservation_id = c.reservation_id"
            " WHERE e.event_id = $1"
            " ORDER BY s.row_label, s.seat_number, s.seat_id",
            event_id,
        )
        if not rows:
            return None
        seats = [
            SeatRow(r["seat_id"], r["row_label"], r["seat_number"], r["price_cents"], r["claim"])
            for r in rows
            if r["seat_id"] is not None  # an event without seats: one row of NULLs
        ]
        return rows[0]["seats_version"], seats

    async def hold_context(self, event_id: str, seat_id: str, user_id: str) -> HoldContext | None:
        """The seat's claim, the event's limits and the user's reserved seats; None when the
        event has no such seat."""
        row = await self.pool.fetchrow(
            "SELECT r.status AS claim, e.max_seats_per_user, e.hold_seconds,"
            " ARRAY(SELECT DISTINCT seat FROM reservations u, unnest(u.seat_ids) AS seat"
            "  WHERE u.event_id = $1 AND coalesce(u.bought_by, u.user_id) = $3"
            "  AND u.status IN ('pending', 'awaiting_payment', 'confirmed')) AS reserved"
            " FROM seats s JOIN booking_events e ON e.event_id = s.event_id"
            " LEFT JOIN seat_claims c ON c.event_id = s.event_id AND c.seat_id = s.seat_id"
            " LEFT JOIN reservations r ON r.reservation_id = c.reservation_id"
            " WHERE s.event_id = $1 AND s.seat_id = $2",
            event_id,
            seat_id,
            user_id,
        )
        if row is None:
            return None
        return HoldContext(
            claim_status=row["claim"],
            max_seats_per_user=row["max_seats_per_user"],
            hold_seconds=row["hold_seconds"],
            reserved_seat_ids=list(row["reserved"]),
        )

    async def reservation(self, reservation_id: uuid.UUID) -> ReservationRow | None:
        row = await self.pool.fetchrow(
            "SELECT reservation_id, event_id, user_id, seat_ids, status, reason, amount_cents,"
            " created_at, updated_at FROM reservations WHERE reservation_id = $1",
            reservation_id,
        )
        if row is None:
            return None
        return ReservationRow(
            row["reservation_id"],
            row["event_id"],
            row["user_id"],
            list(row["seat_ids"]),
            row["status"],
            row["reason"],
            row["amount_cents"],
            row["created_at"],
            row["updated_at"],
        )

    async def known_seats(self, event_id: str, seat_ids: Sequence[str]) -> set[str] | None:
        """Which of ``seat_ids`` the event has, or None when there is no such event: the
        reservation route's catalog check in one round trip."""
        row = await self.pool.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM booking_events WHERE event_id = $1) AS event,"
            " ARRAY(SELECT seat_id FROM seats WHERE event_id = $1"
            " AND seat_id = ANY($2::text[])) AS seats",
            event_id,
            list(seat_ids),
        )
        if row is None or not row["event"]:
            return None
        return set(row["seats"])

    async def insert_pending(self, pending: PendingRow) -> PendingInsert:
        """Record the request as ``pending`` unless the reservation exists; says which.

        The API writes this row before it sends the command, so the worker always finds it
        (and moves it to ``awaiting_payment``) and never holds this insert behind its batch
        transaction; the worker still creates the row itself when it is missing (the send
        that seemed to fail had reached SQS and its row was deleted)."""
        row = await self.pool.fetchrow(
            "WITH inserted AS (INSERT INTO reservations (reservation_id, event_id, user_id,"
            " seat_ids, status, created_at, pay_by) VALUES ($1, $2, $3, $4, 'pending',"
            " $5::timestamptz, $5::timestamptz + $6::interval)"
            " ON CONFLICT (reservation_id) DO NOTHING RETURNING 1)"
            # The statement's snapshot does not see its own insert: the status read is the
            # row that was there before, if any.
            " SELECT EXISTS (SELECT 1 FROM inserted) AS inserted,"
            " (SELECT status FROM reservations WHERE reservation_id = $1) AS status",
            *pending.arguments(),
        )
        if row is None:  # never: a SELECT without FROM returns one row
            raise RuntimeError("the pending insert returned no row")
        return PendingInsert(inserted=bool(row["inserted"]), existing_status=row["status"])

    async def insert_pending_if_known(
        self, pending: PendingRow
    ) -> tuple[set[str] | None, PendingInsert]:
        """``known_seats`` and ``insert_pending`` in one round trip (issue 22: the booking
        burst's reservations queued on the pool of 10 connections, two statements each).

        The row is written only when the event exists and has every one of its seats
        (distinct, as the route checks first): the known seats come first, ``None`` when
        there is no such event, and then what the insert found, ``inserted`` False when it
        was not attempted. The caller decides on the known seats exactly as after
        ``known_seats``; the insert it would have made next is already done or skipped."""
        row = await self.pool.fetchrow(
            "WITH known AS (SELECT EXISTS (SELECT 1 FROM booking_events WHERE event_id = $2)"
            " AS event, ARRAY(SELECT seat_id FROM seats WHERE event_id = $2"
            " AND seat_id = ANY($4::text[])) AS seats),"
            " inserted AS (INSERT INTO reservations (reservation_id, event_id, user_id,"
            " seat_ids, status, created_at, pay_by) SELECT $1, $2, $3, $4, 'pending',"
            " $5::timestamptz, $5::timestamptz + $6::interval FROM known"
            " WHERE known.event AND cardinality(known.seats) = cardinality($4::text[])"
            " ON CONFLICT (reservation_id) DO NOTHING RETURNING 1)"
            # As in insert_pending: the snapshot does not see the statement's own insert.
            " SELECT known.event, known.seats, EXISTS (SELECT 1 FROM inserted) AS inserted,"
            " (SELECT status FROM reservations WHERE reservation_id = $1) AS status"
            " FROM known",
            *pending.arguments(),
        )
        if row is None:  # never: one row from the one-row CTE
            raise RuntimeError("the pending insert returned no row")
        known = set(row["seats"]) if row["event"] else None
        return known, PendingInsert(inserted=bool(row["inserted"]), existing_status=row["status"])

    async def delete_pending(self, reservation_id: uuid.UUID) -> bool:
        """Remove a ``pending`` row this request wrote and whose command was not queued, so
        it neither counts towards the seat cap nor looks queued; False when the worker had
        already moved it on (the command did reach SQS) or it is gone."""
        deleted = await self.pool.fetchval(
            "DELETE FROM reservations WHERE reservation_id = $1 AND status = 'pending' RETURNING 1",
            reservation_id,
        )
        return deleted is not None

    async def stats(self, event_id: str) -> dict[str, Any]:
        counters = await self.pool.fetch(
            "SELECT counter, value FROM event_stats WHERE event_id = $1 ORDER BY counter",
            event_id,
        )
        statuses = await self.pool.fetch(
            "SELECT status, count(*) AS n FROM reservations WHERE event_id = $1 GROUP BY status",
            event_id,
        )
        return {
            "counters": {row["counter"]: row["value"] for row in counters},
            "reservations": {row["status"]: row["n"] for row in statuses},
        }

    async def user_exists(self, table: str, id_column: str, user_id: str) -> bool:
        # Identifiers come from validated settings (a strict pattern), never from a request.
        query = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {id_column}::text = $1)"  # noqa: S608
        try:
            return bool(await self.pool.fetchval(query, user_id))
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
            raise UserDirectoryUnavailable(str(exc)) from exc


_EVENTS_SELECT = (
    "SELECT e.event_id, e.name, e.venue, e.starts_at, e.max_seats_per_user, e.hold_seconds,"
    " (SELECT count(*) FROM seats s WHERE s.event_id = e.event_id) AS total,"
    " (SELECT count(*) FROM seat_claims c WHERE c.event_id = e.event_id) AS taken"
    " FROM booking_events e"
)


def _event_json(row: asyncpg.Record) -> dict[str, Any]:
    total, taken = int(row["total"]), int(row["taken"])
    return {
        "eventId": row["event_id"],
        "name": row["name"],
        "venue": row["venue"],
        "startsAt": row["starts_at"].isoformat() if row["starts_at"] else None,
        "seats": {"total": total, "available": total - taken},
        "maxSeatsPerUser": row["max_seats_per_user"],
        "holdSeconds": row["hold_seconds"],
    }
