"""The reservation-outcome consumer's handler on real PostgreSQL and Redis: holds released
once, duplicates and malformed records skipped, the optional queue completion call."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from pydantic import SecretStr

from urr_common.clients import open_redis
from urr_common.upstream_security import ServiceCredentialSettings, internal_app
from urr_devstack.testing import patient_redis
from urr_ticket.outcomes import OutcomeHandler, QueueCompleter
from urr_ticket.seat_locks import HoldLimits, SeatLocks
from urr_ticket.settings import QueueCompletionSettings
from urr_ticket_worker.booking import apply_command
from urr_ticket_worker.messages import ReservationOutcome, ReserveCommand, outcome_message_id
from urr_ticket_worker.settings import BookingSettings

pytestmark = pytest.mark.integration
LIMITS = HoldLimits(hold_seconds=60, max_seats_per_user=4)


def record(value: bytes) -> Any:
    return SimpleNamespace(value=value, topic="reservation-events", offset=0)


SECRET = "outcomes-test-secret-0123456789abcdef"
CREDENTIAL = ServiceCredentialSettings(name="ticket", secret=SecretStr(SECRET))


async def test_confirmation_releases_holds_and_completes_the_queue_session(
    db: asyncpg.Pool, redis_url: str, aiohttp_server: Any
) -> None:
    completed: list[tuple[str, Any]] = []

    async def complete(request: web.Request) -> web.Response:
        completed.append((request.match_info["event_id"], await request.json()))
        return web.json_response({"ended": True})

    def routes(app: web.Application) -> None:
        app.router.add_post("/internal/v1/queue/{event_id}/complete", complete)

    # The queue's internal listener as the queue builds it: a caller's credential is checked.
    server = await aiohttp_server(internal_app({"ticket": SecretStr(SECRET)}, routes))

    command = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id="demo", user_id="fan", seat_ids=["D1", "D2"]
    )
    await apply_command(db, "m-1", command, BookingSettings())
    outcome = ReservationOutcome(
        message_id=outcome_message_id(command.reservation_id, "confirmed"),
        event_id="demo",
        user_id="fan",
        reservation_id=command.reservation_id,
        status="confirmed",
    )
    async with (
        open_redis(patient_redis(redis_url)) as redis,
        aiohttp.ClientSession() as session,
    ):
        locks = SeatLocks(redis)
        for seat in ("D1", "D2"):
            assert (await locks.hold("demo", seat, "fan", LIMITS)).held
        assert (await locks.hold("demo", "D3", "someone-else", LIMITS)).held
        completer = QueueCompleter(
            session,
            QueueCompletionSettings(http_fallback=True, base_url=str(server.make_url(""))),
            CREDENTIAL,
        )
        handler = OutcomeHandler(db, locks, completer)

        assert await handler.handle(record(outcome.to_json())) == "applied"
        remaining = await locks.holders("demo", ["D1", "D2", "D3"])
        assert set(remaining) == {"D3"}  # only fan's holds went; someone else's stays
        assert await handler.handle(record(outcome.to_json())) == "duplicate"
        assert await handler.handle(record(b"{not json")) == "malformed"
        assert await handler.handle(record(None)) == "malformed"  # type: ignore[arg-type]
    assert await db.fetchval("SELECT status FROM reservations") == "confirmed"
    assert completed == [("demo", {"userId": "fan"})]


async def test_an_unreachable_queue_service_does_not_stop_the_consumer(
    db: asyncpg.Pool, redis_url: str
) -> None:
    from urr_devstack.procs import free_port

    command = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id="demo", user_id="fan", seat_ids=["D4"]
    )
    await apply_command(db, "m-2", command, BookingSettings())
    declined = ReservationOutcome(
        message_id=uuid.uuid4(),
        event_id="demo",
        user_id="fan",
        reservation_id=command.reservation_id,
        status="declined",
        reason="unknown_reservation",  # final: the session ends (a declined card does not)
    )
    async with (
        open_redis(patient_redis(redis_url)) as redis,
        aiohttp.ClientSession() as session,
    ):
        completer = QueueCompleter(
            session,
            QueueCompletionSettings(http_fallback=True, base_url=f"http://127.0.0.1:{free_port()}"),
            CREDENTIAL,
        )
        handler = OutcomeHandler(db, SeatLocks(redis), completer)
        assert await handler.handle(record(declined.to_json())) == "applied"
    assert await db.fetchval("SELECT status FROM reservations") == "declined"
    assert await db.fetchval("SELECT count(*) FROM seat_claims") == 0


async def test_a_declined_card_keeps_the_holds_and_the_session_for_a_retry(
    db: asyncpg.Pool, redis_url: str, aiohttp_server: Any
) -> None:
    """Issue 21: the buyer may pay again while the seat is held, so neither the holds nor
    the Tier-2 session end; the seat claim goes (a retry claims again)."""
    completed: list[str] = []

    async def complete(request: web.Request) -> web.Response:
        completed.append(request.match_info["event_id"])
        return web.json_response({"ended": True})

    app = web.Application()
    app.router.add_post("/internal/v1/queue/{event_id}/complete", complete)
    server = await aiohttp_server(app)
    command = ReserveCommand(
        reservation_id=uuid.uuid4(), event_id="demo", user_id="fan", seat_ids=["E1"]
    )
    await apply_command(db, "m-3", command, BookingSettings())
    declined = ReservationOutcome(
        message_id=outcome_message_id(command.reservation_id, "declined"),
        event_id="demo",
        user_id="fan",
        reservation_id=command.reservation_id,
        status="declined",
        reason="card_declined",
    )
    async with (
        open_redis(patient_redis(redis_url)) as redis,
        aiohttp.ClientSession() as session,
    ):
        locks = SeatLocks(redis)
        assert (await locks.hold("demo", "E1", "fan", LIMITS)).held
        completer = QueueCompleter(
            session,
            QueueCompletionSettings(http_fallback=True, base_url=str(server.make_url(""))),
            CREDENTIAL,
        )
        handler = OutcomeHandler(db, locks, completer)
        assert await handler.handle(record(declined.to_json())) == "applied"
        assert set(await locks.holders("demo", ["E1"])) == {"E1"}
    assert await db.fetchval("SELECT status FROM reservations") == "declined"
    assert await db.fetchval("SELECT count(*) FROM seat_claims") == 0
    assert completed == []
