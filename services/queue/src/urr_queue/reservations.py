"""``reservation-events`` consumer: a finished booking ends the user's admitted session.

Records are JSON objects with at least ``eventId``, ``userId``, ``status`` and
``reservationId``. A final status (confirmed, declined, expired, cancelled) ends the
session, except a decline the buyer may retry (``reason`` ``card_declined``: the seats stay
held for another payment attempt); other statuses are ignored; malformed records are
skipped. Delivery is at least once, so each (reservationId, status) is applied once,
remembered in Redis for a day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from urr_common.logs import get_logger
from urr_queue.keys import reservation_done_key
from urr_queue.members import is_event_id, is_user_id
from urr_queue.metrics import QueueMetrics
from urr_queue.sessions import EndReason, SessionEnder

_LOG = get_logger(__name__)

FINAL_STATUSES = frozenset({"confirmed", "declined", "expired", "cancelled"})
#: A payment decline the buyer may retry while the seats are held (the ticket worker's
#: ``RETRYABLE_DECLINES``): the session goes on, so the retry needs no new place in line.
RETRYABLE_DECLINES = frozenset({"card_declined"})
_MAX_RESERVATION_ID = 128


class MalformedRecord(ValueError):
    """A record that is not a reservation event."""


@dataclass(frozen=True)
class ReservationOutcome:
    event_id: str
    user_id: str
    status: str
    reservation_id: str
    reason: str | None = None

    @property
    def is_final(self) -> bool:
        if self.status == "declined" and self.reason in RETRYABLE_DECLINES:
            return False
        return self.status in FINAL_STATUSES


def parse_reservation_event(raw: bytes | None) -> ReservationOutcome:
    if not raw:
        raise MalformedRecord("empty record")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedRecord("not JSON") from exc
    if not isinstance(data, dict):
        raise MalformedRecord("not a JSON object")
    event_id, user_id = data.get("eventId"), data.get("userId")
    status, reservation_id = data.get("status"), data.get("reservationId")
    if not isinstance(event_id, str) or not is_event_id(event_id):
        raise MalformedRecord("bad eventId")
    if not isinstance(user_id, str) or not is_user_id(user_id):
        raise MalformedRecord("bad userId")
    if not isinstance(status, str) or not status:
        raise MalformedRecord("bad status")
    if isinstance(reservation_id, int) and not isinstance(reservation_id, bool):
        reservation_id = str(reservation_id)
    if not isinstance(reservation_id, str) or not 1 <= len(reservation_id) <= _MAX_RESERVATION_ID:
        raise MalformedRecord("bad reservationId")
    reason = data.get("reason")
    return ReservationOutcome(
        event_id,
        user_id,
        status.lower(),
        reservation_id,
        reason if isinstance(reason, str) and len(reason) <= 64 else None,
    )


class Record(Protocol):
    value: bytes | None


class Consumer(Protocol):
    async def getmany(self, *partitions: Any, timeout_ms: int = ...) -> dict[Any, list[Any]]: ...

    async def commit(self) -> None: ...


ConsumerFactory = Callable[[], AbstractAsyncContextManager[Consumer]]


class ReservationEventsConsumer:
    def __init__(
        self,
        ender: SessionEnder,
        metrics: QueueMetrics,
        consumer_factory: ConsumerFactory,
        *,
        dedupe_ttl_s: int,
        retry_delay_s: float,
    ) -> None:
        self.ender = ender
        self.metrics = metrics
        self._factory = consumer_factory
        self._dedupe_ttl_s = dedupe_ttl_s
        self._retry_delay_s = retry_delay_s

    async def run(self) -> None:
        while True:
            try:
                async with self._factory() as consumer:
                    _LOG.info("reservation_events_connected")
                    while True:
                        batches = await consumer.getmany(timeout_ms=1000)
                        for records in batches.values():
                            for record in records:
                                await self.handle(record.value)
                        if batches:
                            await consumer.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker or Redis failure: wait and reconnect
                _LOG.warning("reservation_events_unavailable", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._retry_delay_s)

    async def handle(self, raw: bytes | None) -> str:
        """Apply one record; the outcome label (also counted)."""
        outcome = await self._apply(raw)
        self.metrics.reservation_records.labels(outcome).inc()
        return outcome

    async def _apply(self, raw: bytes | None) -> str:
        try:
            event = parse_reservation_event(raw)
        except MalformedRecord as exc:
            _LOG.warning("reservation_record_malformed", reason=str(exc))
            return "malformed"
        if not event.is_final:
            return "ignored"
        redis = self.ender.store.redis
        key = reservation_done_key(event.reservation_id, event.status)
        first = await redis.set(key, b"1", nx=True, ex=self._dedupe_ttl_s)
        if not first:
            return "duplicate"
        try:
            left = await self.ender.end(event.event_id, event.user_id, EndReason.COMPLETED)
        except BaseException:
            # Not applied: let a redelivery try again.
            await redis.delete(key)
            raise
        if left is None:
            return "unknown_event"
        return "applied" if left.was == "admitted" else "no_session"
