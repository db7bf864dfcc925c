"""HTTP handlers of the ticket API.

Identity comes only from the gateway's signed assertion (``X-Urr-Identity``, verified by the
``urr_common.upstream_security`` middleware; ``X-User-*`` headers are never read). The gateway
has already checked the Tier-2 entry token on ``/api/v1/seats/*`` and
``/api/v1/reservations/*``. The catalog and stats are public; an owner reads a reservation
without an entry token at ``/api/v1/events/{eventId}/reservations/{reservationId}``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Annotated, Any, NoReturn

from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from urr_common.logs import get_logger
from urr_common.payloads import json_response, read_json
from urr_common.problems import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
)
from urr_common.upstream_security import IDENTITY, identity_of
from urr_ticket.appkeys import (
    COMMANDS_KEY,
    LOCKS_KEY,
    METRICS_KEY,
    RESERVATION_IDS_KEY,
    SEAT_MAPS_KEY,
    STORE_KEY,
    TICKET_SETTINGS_KEY,
)
from urr_ticket.seat_locks import Hold, HoldLimits, HoldOutcome, SeatLocksUnavailable
from urr_ticket.session import (
    ENTRY_TOKEN_COOKIE,
    ENTRY_TOKEN_HEADER,
    SessionRefused,
    session_end_ms,
)
from urr_ticket.store import (
    HoldContext,
    PendingInsert,
    PendingRow,
    ReservationRow,
    UserDirectoryUnavailable,
)
from urr_ticket_worker.booking import MAX_PAYMENT_ATTEMPTS, RETRYABLE_DECLINES
from urr_ticket_worker.messages import (
    MAX_SEATS_PER_RESERVATION,
    CancelCommand,
    ReserveCommand,
    TransferCommand,
    utc_now,
)

_LOG = get_logger(__name__)
_EVENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SEAT_ID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")
_USER_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_SeatId = Annotated[str, StringConstraints(pattern=_SEAT_ID.pattern)]
_UserId = Annotated[str, StringConstraints(pattern=_USER_ID.pattern)]
#: Statuses that still hold seats and may be cancelled.
_CANCELLABLE = frozenset({"pending", "awaiting_payment", "confirmed"})


class ReserveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seatIds: list[_SeatId] = Field(min_length=1, max_length=MAX_SEATS_PER_RESERVATION)
    #: Which payment attempt on these holds: 1, or a retry after the previous attempt's card
    #: was declined (issue 21), at most ``MAX_PAYMENT_ATTEMPTS``.
    attempt: int = Field(default=1, ge=1, le=MAX_PAYMENT_ATTEMPTS)


class TransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    toUserId: _UserId


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_get("/api/v1/events/{event_id}", get_event)
    app.router.add_get("/api/v1/seats/{event_id}", seat_map)
    app.router.add_post("/api/v1/seats/{event_id}/{seat_id}/hold", hold_seat)
    app.router.add_delete("/api/v1/seats/{event_id}/{seat_id}/hold", release_seat)
    app.router.add_post("/api/v1/reservations/{event_id}", reserve)
    app.router.add_get("/api/v1/reservations/{event_id}/{reservation_id}", reservation_status)
    app.router.add_post("/api/v1/reservations/{event_id}/{reservation_id}/cancel", cancel)
    app.router.add_post("/api/v1/reservations/{event_id}/{reservation_id}/transfer", transfer)
    app.router.add_get("/api/v1/stats/{event_id}", event_stats)
    # The owner's read without an entry token: the queue ends the Tier-2 session (revoking
    # the token) once the outcome is final, and the owner must still be able to see it.
    app.router.add_get(
        "/api/v1/events/{event_id}/reservations/{reservation_id}", reservation_status
    )


#: How long a client waits before asking again while the seat holds cannot be reached.
HOLDS_RETRY_AFTER_S = 1


@web.middleware
async def seat_holds_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Redis unreachable or late: a 503 to retry, never a 500.

    A burst opens many Redis connections at once, and a connect or a reply can outlast its
    timeout while the event loop is busy; what the client needs to know is that nothing it
    can see changed for certain and that asking again is safe (a hold of a seat you hold
    answers your hold; a reservation's holds are read before anything is written)."""
    try:
        return await handler(request)
    except SeatLocksUnavailable as exc:
        _LOG.warning("seat_holds_unavailable", path=request.path, error=str(exc))
        raise ServiceUnavailable(
            f"the seat holds cannot be read or changed right now; try again in"
            f" {HOLDS_RETRY_AFTER_S} s",
            code="seat_holds_unavailable",
            headers={"Retry-After": str(HOLDS_RETRY_AFTER_S)},
        ) from exc


# --- request helpers ----------------------------------------------------------------------


def _user_id(request: web.Request) -> str:
    """The asserted user (401 ``identity_required`` without a valid assertion)."""
    user_id = identity_of(request).user_id
    if not _USER_ID.fullmatch(user_id):
        raise BadRequest("the asserted user id is not a valid user id", code="bad_user_id")
    return user_id


def _event_id(request: web.Request) -> str:
    event_id = request.match_info["event_id"]
    if not _EVENT_ID.fullmatch(event_id):
        raise NotFound(f"no event {event_id!r}", code="event_not_found")
    return event_id


def _reservation_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["reservation_id"])
    except ValueError as exc:
        raise NotFound("no such reservation", code="reservation_not_found") from exc


async def _require_event(request: web.Request, event_id: str) -> dict[str, Any]:

    event = await request.app[STORE_KEY].event(event_id)
    if event is None:
        raise NotFound(f"no event {event_id!r}", code="event_not_found")
    return event


async def _own_reservation(request: web.Request) -> ReservationRow:
    """The caller's reservation in this event, or 404 (someone else's is not revealed)."""

    user_id = _user_id(request)
    event_id = _event_id(request)
    reservation_id = _reservation_id(request)
    row = await request.app[STORE_KEY].reservation(reservation_id)
    if row is None or row.event_id != event_id or row.user_id != user_id:
        raise NotFound("no such reservation", code="reservation_not_found")
    return row


async def _send(
    request: web.Request, command: ReserveCommand | CancelCommand | TransferCommand
) -> None:

    try:
        await request.app[COMMANDS_KEY].send(command)
    except Exception as exc:  # SQS unreachable or the queue missing: nothing was queued
        raise ServiceUnavailable(
            "the booking queue is unavailable; try again", code="booking_queue_unavailable"
        ) from exc


# --- catalog --------------------------------------------------------------------------------


async def list_events(request: web.Request) -> web.Response:

    return json_response({"events": await request.app[STORE_KEY].events()})


async def get_event(request: web.Request) -> web.Response:
    return json_response(await _require_event(request, _event_id(request)))


# --- seats --------------------------------------------------------------------------------


async def seat_map(request: web.Request) -> web.Response:
    """Every seat of the event with its state for the caller (``urr_ticket.seat_map``: the
    catalogue is kept per process and versioned in PostgreSQL; the claims and holds are read
    on every call); 404 for an unknown event, an empty map for a known one without seats."""

    event_id = _event_id(request)
    identity = request.get(IDENTITY)
    caller = identity.user_id if identity is not None else None
    body = await request.app[SEAT_MAPS_KEY].render(event_id, caller)
    if body is None:
        raise NotFound(f"no event {event_id!r}", code="event_not_found")
    return web.Response(body=body, content_type="application/json")


async def _require_seat(request: web.Request, event_id: str, seat_id: str) -> str | None:
    """404 unless the seat exists; returns the status of a reservation claiming it."""

    if not _SEAT_ID.fullmatch(seat_id):
        raise NotFound(f"no seat {seat_id!r} in {event_id!r}", code="seat_not_found")
    seats = await request.app[STORE_KEY].seats(event_id, [seat_id])
    if not seats:
        await _require_event(request, event_id)
        raise NotFound(f"no seat {seat_id!r} in {event_id!r}", code="seat_not_found")
    return seats[0].claim_status


def _session_end_ms(request: web.Request, user_id: str, event_id: str) -> int | None:
    token = request.headers.get(ENTRY_TOKEN_HEADER) or request.cookies.get(ENTRY_TOKEN_COOKIE)
    try:
        return session_end_ms(token, user_id, event_id)
    except SessionRefused as exc:
        raise Forbidden(exc.detail, code=exc.code) from exc


async def _hold_context(
    request: web.Request, event_id: str, seat_id: str, user_id: str
) -> HoldContext:
    if not _SEAT_ID.fullmatch(seat_id):
        raise NotFound(f"no seat {seat_id!r} in {event_id!r}", code="seat_not_found")
    context = await request.app[STORE_KEY].hold_context(event_id, seat_id, user_id)
    if context is None:
        await _require_event(request, event_id)
        raise NotFound(f"no seat {seat_id!r} in {event_id!r}", code="seat_not_found")
    return context


async def hold_seat(request: web.Request) -> web.Response:
    user_id = _user_id(request)
    event_id = _event_id(request)
    seat_id = request.match_info["seat_id"]
    metrics = request.app[METRICS_KEY]
    context = await _hold_context(request, event_id, seat_id, user_id)
    session_end = _session_end_ms(request, user_id, event_id)
    if context.claim_status is not None:
        metrics.holds.labels("sold").inc()
        raise Conflict("this seat is already reserved", code="seat_sold")
    limits = HoldLimits(
        hold_seconds=context.hold_seconds,
        max_seats_per_user=context.max_seats_per_user,
        session_end_ms=session_end,
        reserved_seat_ids=context.reserved_seat_ids,
    )
    attempt = await request.app[LOCKS_KEY].hold(event_id, seat_id, user_id, limits)
    # "conflict" (someone else holds it) keeps the label it had before the other refusals.
    taken = attempt.outcome is HoldOutcome.TAKEN
    metrics.holds.labels("conflict" if taken else attempt.outcome.name.lower()).inc()
    if attempt.outcome is HoldOutcome.TAKEN:
        raise Conflict(
            "someone else holds this seat", code="seat_held", expiresAtMs=attempt.expires_at_ms
        )
    if attempt.outcome is HoldOutcome.LIMIT_REACHED:
        raise Conflict(
            f"you already hold or bought {attempt.seats_counted} seats in this event;"
            f" the limit is {context.max_seats_per_user}",
            code="seat_limit_reached",
            maxSeatsPerUser=context.max_seats_per_user,
            seatsCounted=attempt.seats_counted,
        )
    if attempt.outcome is HoldOutcome.SESSION_OVER:
        raise Forbidden("the entry token has expired; queue again", code="entry_token_expired")
    if attempt.outcome is HoldOutcome.HOLD_TIME_USED:
        raise Conflict(
            "your hold time on this seat in this session is used up; choose another seat",
            code="hold_time_used",
            expiredAtMs=attempt.expires_at_ms,
        )
    return json_response(
        {
            "eventId": event_id,
            "seatId": seat_id,
            "holdId": attempt.hold_id,
            "expiresAtMs": attempt.expires_at_ms,
            "maxSeatsPerUser": context.max_seats_per_user,
        }
    )


async def release_seat(request: web.Request) -> web.Response:

    user_id = _user_id(request)
    event_id = _event_id(request)
    seat_id = request.match_info["seat_id"]
    await _require_seat(request, event_id, seat_id)
    if not await request.app[LOCKS_KEY].release(event_id, [seat_id], user_id):
        raise Conflict("you do not hold this seat", code="seat_not_held")
    return web.Response(status=204)


# --- reservations ---------------------------------------------------------------------------


async def reserve(request: web.Request) -> web.Response:
    """Queue a reservation of seats the caller holds.

    Two waits on the way before the SQS send (there were six): the holds (Redis), then one
    statement that checks the catalog and writes the ``pending`` row when every seat is
    known (``insert_pending_if_known``). The row is written before the command is sent, so
    the worker always finds it and never makes this request wait on its batch transaction;
    when the send fails, the row this request wrote is removed again (a retry starts afresh
    and the seats do not count towards the cap) and the answer is a 503. The answers and
    their order are as when the catalog was read first: an unknown event or seat is a 404
    before a seat not held is a 409 (the catalog is read then, on the refusal's path).
    A retry after a declined card (``attempt`` > 1) reads the catalog and the holds at once,
    then the earlier attempt, then writes the row."""

    user_id = _user_id(request)
    event_id = _event_id(request)
    body = await read_json(request, ReserveBody)
    if len(set(body.seatIds)) != len(body.seatIds):
        raise Unprocessable("a seat appears twice", code="duplicate_seat")
    if body.attempt > 1:
        return await _reserve_again(request, user_id, event_id, body)
    store = request.app[STORE_KEY]
    holds = await request.app[LOCKS_KEY].holders(event_id, body.seatIds)
    held = _held_by(user_id, body.seatIds, holds)
    if held is None:  # refused: which refusal depends on the catalog, as before
        _check_known(await store.known_seats(event_id, body.seatIds), event_id, body.seatIds)
        _refuse_not_held(request, user_id, body.seatIds, holds)
    reservation_id = request.app[RESERVATION_IDS_KEY].for_request(event_id, user_id, held)
    row = _pending_row(request, reservation_id, event_id, user_id, body)
    known, pending = await store.insert_pending_if_known(row)
    _check_known(known, event_id, body.seatIds)
    return await _queue(request, row, pending)


def _check_known(known: set[str] | None, event_id: str, seat_ids: list[str]) -> None:
    """404 for an unknown event, or for seats it does not have."""
    if known is None:
        raise NotFound(f"no event {event_id!r}", code="event_not_found")
    missing = sorted(set(seat_ids) - known)
    if missing:
        raise NotFound(
            f"no seats {missing} in {event_id!r}", code="seat_not_found", seatIds=missing
        )


def _held_by(
    user_id: str, seat_ids: list[str], holds: dict[str, Hold]
) -> list[tuple[str, str]] | None:
    """``(seat, hold id)`` of every seat when the user holds them all, else None."""
    held = []
    for seat in seat_ids:
        hold = holds.get(seat)
        if hold is None or hold.owner != user_id:
            return None
        held.append((seat, hold.hold_id))
    return held


def _refuse_not_held(
    request: web.Request, user_id: str, seat_ids: list[str], holds: dict[str, Hold]
) -> NoReturn:
    request.app[METRICS_KEY].reservations.labels("refused").inc()
    not_held = [s for s in seat_ids if s not in holds or holds[s].owner != user_id]
    raise Conflict("hold every seat before reserving it", code="seat_not_held", seatIds=not_held)


async def _reserve_again(
    request: web.Request, user_id: str, event_id: str, body: ReserveBody
) -> web.Response:
    """A further payment attempt on the same holds: allowed only after the previous
    attempt was declined by the card issuer."""
    store = request.app[STORE_KEY]
    metrics = request.app[METRICS_KEY]
    known, holds = await asyncio.gather(
        store.known_seats(event_id, body.seatIds),
        request.app[LOCKS_KEY].holders(event_id, body.seatIds),
    )
    _check_known(known, event_id, body.seatIds)
    held = _held_by(user_id, body.seatIds, holds)
    if held is None:
        _refuse_not_held(request, user_id, body.seatIds, holds)
    ids = request.app[RESERVATION_IDS_KEY]
    reservation_id = ids.for_request(event_id, user_id, held, body.attempt)
    previous = await store.reservation(ids.for_request(event_id, user_id, held, body.attempt - 1))
    if (
        previous is None
        or previous.status != "declined"
        or previous.reason not in RETRYABLE_DECLINES
    ):
        metrics.reservations.labels("refused").inc()
        raise Conflict(
            f"attempt {body.attempt} needs attempt {body.attempt - 1} on these holds to have"
            " been declined by the card issuer",
            code="retry_not_allowed",
        )
    row = _pending_row(request, reservation_id, event_id, user_id, body)
    return await _queue(request, row, await store.insert_pending(row))


def _pending_row(
    request: web.Request,
    reservation_id: uuid.UUID,
    event_id: str,
    user_id: str,
    body: ReserveBody,
) -> PendingRow:
    return PendingRow(
        reservation_id,
        event_id,
        user_id,
        body.seatIds,
        utc_now(),
        request.app[TICKET_SETTINGS_KEY].booking.pending_window_s,
    )


async def _queue(request: web.Request, row: PendingRow, pending: PendingInsert) -> web.Response:
    """Send the reservation's command unless the row had moved on; the 202."""
    metrics = request.app[METRICS_KEY]
    reservation_id = row.reservation_id
    status = pending.existing_status
    if not pending.inserted and status is not None and status != "pending":
        metrics.reservations.labels("duplicate").inc()
        return _accepted(request, reservation_id, status)
    # Sent again for a row still pending (a repeated request): SQS drops the copy by its
    # deduplication id, the worker by the reservation's status.
    command = ReserveCommand(
        reservation_id=reservation_id,
        event_id=row.event_id,
        user_id=row.user_id,
        seat_ids=list(row.seat_ids),
        requested_at=row.requested_at,
    )
    try:
        await _send(request, command)
    except ServiceUnavailable:
        if pending.inserted:
            await _forget_pending(request, reservation_id)
        raise
    metrics.reservations.labels("queued" if pending.inserted else "duplicate").inc()
    return _accepted(request, reservation_id, "pending")


async def _forget_pending(request: web.Request, reservation_id: uuid.UUID) -> None:
    """Remove the row of a request whose command could not be queued. When that fails too,
    the row stays ``pending`` until its window ends (the worker then expires it as
    ``not_processed``), and a retry of the same request sends the command again."""
    try:
        await request.app[STORE_KEY].delete_pending(reservation_id)
    except Exception as exc:  # PostgreSQL gone as well: the client still gets the 503
        _LOG.warning("pending_row_kept", reservation_id=str(reservation_id), error=repr(exc))


def _accepted(request: web.Request, reservation_id: uuid.UUID, status: str) -> web.Response:
    event_id = request.match_info["event_id"]
    location = f"/api/v1/reservations/{event_id}/{reservation_id}"
    return json_response(
        {"reservationId": str(reservation_id), "eventId": event_id, "status": status},
        status=202,
        headers={"Location": location},
    )


async def reservation_status(request: web.Request) -> web.Response:
    row = await _own_reservation(request)
    return json_response(row.to_json())


async def cancel(request: web.Request) -> web.Response:
    row = await _own_reservation(request)
    if row.status not in _CANCELLABLE:
        raise Conflict(f"the reservation is {row.status}", code="not_cancellable")
    await _send(
        request,
        CancelCommand(
            reservation_id=row.reservation_id, event_id=row.event_id, user_id=row.user_id
        ),
    )
    return _accepted(request, row.reservation_id, row.status)


async def transfer(request: web.Request) -> web.Response:

    row = await _own_reservation(request)
    body = await read_json(request, TransferBody)
    if body.toUserId == row.user_id:
        raise Unprocessable("you already own this reservation", code="transfer_to_self")
    if row.status != "confirmed":
        raise Conflict(
            f"only a confirmed reservation can be transferred; it is {row.status}",
            code="not_transferable",
        )
    users = request.app[TICKET_SETTINGS_KEY].users
    try:
        exists = await request.app[STORE_KEY].user_exists(
            users.table, users.id_column, body.toUserId
        )
    except UserDirectoryUnavailable as exc:
        raise ServiceUnavailable(
            "the user directory cannot be read", code="user_directory_unavailable"
        ) from exc
    if not exists:
        raise Unprocessable("no user has this id", code="recipient_not_found")
    await _send(
        request,
        TransferCommand(
            reservation_id=row.reservation_id,
            event_id=row.event_id,
            user_id=row.user_id,
            to_user_id=body.toUserId,
        ),
    )
    return _accepted(request, row.reservation_id, row.status)


# --- stats ----------------------------------------------------------------------------------


async def event_stats(request: web.Request) -> web.Response:

    event_id = _event_id(request)
    store = request.app[STORE_KEY]
    event = await store.event(event_id)
    stats = await store.stats(event_id)
    if event is None and not stats["counters"]:
        raise NotFound(f"no event {event_id!r}", code="event_not_found")
    seats = event["seats"] if event else {"total": 0, "available": 0}
    return json_response({"eventId": event_id, "seats": seats, **stats})
