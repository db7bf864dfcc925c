"""The reservation-outcome consumer: ``reservation-events`` -> confirm or decline the
reservation in PostgreSQL (once per ``messageId``), then release the user's seat holds in Redis;
and ``queue-events`` -> release every seat hold of a user whose Tier-2 session ended.

The queue service consumes ``reservation-events`` too, to end the user's Tier-2 session, so the
slot frees without a call from here. Records the ticket side wrote itself (cancelled, expired)
find the reservation already final and only release the holds. Duplicates and malformed records
are skipped and counted (``urr_booking_consumer_records{outcome=...}``).

Session ends: a hold never outlives the entry token it was taken with (the token expires with
the session), and the queue announces every early end on ``queue-events`` (``left``: leave or
a completed booking; ``expired``: session over or idle drop). Each such record releases the
user's holds in the event that started no later than the record's ``at``, so a late or
replayed record never releases the holds of the user's next session. Releasing is idempotent,
so redeliveries need no bookkeeping.

Run: ``python -m urr_ticket.outcomes`` (health on ``URR_HTTP__PORT``, default 3024).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CollectorRegistry

from urr_common.clients import open_redis
from urr_common.logs import get_logger
from urr_common.settings import load_settings
from urr_common.upstream_security import ServiceCredentialSettings
from urr_ticket.seat_locks import SeatLocks, SeatLocksUnavailable
from urr_ticket.settings import OutcomeSettings, QueueCompletionSettings, TicketSettings
from urr_ticket_worker.booking import apply_outcome
from urr_ticket_worker.kafka_loop import ConsumerMetrics, consume, parse_or_log
from urr_ticket_worker.messages import (
    QUEUE_EVENTS,
    RESERVATION_EVENTS,
    QueueEvent,
    ReservationOutcome,
)
from urr_ticket_worker.process import Heartbeat, LoopBody, connect_postgres, run_process

if TYPE_CHECKING:
    import asyncpg

_LOG = get_logger(__name__)
OUTCOMES_CONSUMER = "kafka:ticket-outcomes"


class QueueCompleter:
    """The optional HTTP fallback that tells the queue service a user is done (best effort:
    the Kafka record is the primary path, so a failure is logged and counted, never retried)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: QueueCompletionSettings,
        credential: ServiceCredentialSettings,
    ) -> None:
        self._session = session
        self._base = settings.base_url.rstrip("/")
        self._headers = credential.headers()

    async def complete(self, event_id: str, user_id: str) -> bool:
        url = f"{self._base}/internal/v1/queue/{event_id}/complete"
        try:
            body = {"userId": user_id}
            async with self._session.post(url, json=body, headers=self._headers) as response:
                if response.status < 300:
                    return True
                _LOG.warning("queue_complete_refused", status=response.status, event_id=event_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            _LOG.warning("queue_complete_failed", error=repr(exc), event_id=event_id)
        return False


class OutcomeHandler:
    def __init__(
        self, pool: asyncpg.Pool, locks: SeatLocks, completer: QueueCompleter | None = None
    ) -> None:
        self._pool = pool
        self._locks = locks
        self._completer = completer

    async def handle(self, record: Any) -> str:
        outcome = parse_or_log(ReservationOutcome, record)
        if outcome is None:
            return "malformed"
        applied = await apply_outcome(self._pool, OUTCOMES_CONSUMER, outcome)
        if applied.release_seats and applied.user_id:
            try:
                released = await self._locks.release(
                    outcome.event_id, applied.release_seats, applied.user_id
                )
            except SeatLocksUnavailable as exc:  # the holds expire by their TTL; no retry
                released = 0
                _LOG.warning("hold_release_failed", error=repr(exc))
            _LOG.info(
                "reservation_finished",
                reservation_id=str(outcome.reservation_id),
                status=outcome.status,
                holds_released=released,
            )
            if self._completer is not None and applied.result == "applied":
                await self._completer.complete(outcome.event_id, outcome.user_id)
        return applied.result


#: ``queue-events`` types that end a user's place or session.
SESSION_ENDING = frozenset({"left", "expired"})
#: An ``at`` below this is in seconds, not milliseconds (the queue writes milliseconds).
_MS_THRESHOLD = 100_000_000_000


def ended_at_ms(at: float | str | None) -> int:
    """The record's ``at`` in ms since the epoch; 0 (release every hold) when not a number."""
    if isinstance(at, bool) or not isinstance(at, int | float) or at <= 0:
        return 0
    return int(at if at >= _MS_THRESHOLD else at * 1000)


class SessionEndHandler:
    """``queue-events``: a session that ended releases every hold its user has in the event."""

    def __init__(self, locks: SeatLocks) -> None:
        self._locks = locks

    async def handle(self, record: Any) -> str:
        event = parse_or_log(QueueEvent, record)
        if event is None:
            return "malformed"
        if event.type not in SESSION_ENDING:
            return "ignored"
        try:
            released = await self._locks.release_all(
                event.event_id, event.user_id, started_by_ms=ended_at_ms(event.at)
            )
        except SeatLocksUnavailable as exc:  # the holds end with the session's token anyway
            _LOG.warning("session_hold_release_failed", error=repr(exc))
            return "failed"
        if released:
            _LOG.info(
                "session_holds_released",
                event_id=event.event_id,
                type=event.type,
                holds_released=released,
            )
        return "applied"


class BookingRecords:
    """Routes each record to its topic's handler."""

    def __init__(self, outcomes: OutcomeHandler, sessions: SessionEndHandler) -> None:
        self._outcomes = outcomes
        self._sessions = sessions

    async def handle(self, record: Any) -> str:
        if record.topic == QUEUE_EVENTS:
            return await self._sessions.handle(record)
        return await self._outcomes.handle(record)


def outcome_loop(settings: TicketSettings, registry: CollectorRegistry) -> LoopBody:
    metrics = ConsumerMetrics(registry)

    async def body(stop: asyncio.Event, beat: Heartbeat) -> None:
        pool = await connect_postgres(settings.postgres, stop, beat)
        if pool is None:
            return
        try:
            completion = settings.queue_completion
            timeout = aiohttp.ClientTimeout(total=completion.timeout_s)
            async with (
                open_redis(settings.redis) as redis,
                aiohttp.ClientSession(timeout=timeout) as session,
            ):
                completer = (
                    QueueCompleter(session, completion, settings.queue_credential)
                    if completion.http_fallback
                    else None
                )
                locks = SeatLocks(redis)
                handler = BookingRecords(
                    OutcomeHandler(pool, locks, completer), SessionEndHandler(locks)
                )
                await consume(
                    name="ticket-outcomes",
                    kafka=settings.kafka,
                    group_id=settings.consumers.outcomes_group,
                    topics=[RESERVATION_EVENTS, QUEUE_EVENTS],
                    handle=handler.handle,
                    metrics=metrics,
                    stop=stop,
                    beat=beat,
                    max_records=settings.consumers.max_records,
                    fetch_max_wait_ms=settings.consumers.fetch_max_wait_ms,
                )
        finally:
            await pool.close()

    return body


def main() -> None:
    settings = load_settings(OutcomeSettings)
    run_process(settings, "reservation-outcomes", lambda registry: outcome_loop(settings, registry))


if __name__ == "__main__":
    main()
