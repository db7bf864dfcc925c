"""The payment stand-in: consumes ``payment-events``, answers on ``reservation-events``.

It stands in for an external payment provider, so it keeps no database: its answer for a
reservation is a pure function of the reservation id (approve unless a hash of the id falls
under ``payment.decline_rate``) and the answer's ``messageId`` is derived from the reservation
and the status. A redelivered request therefore produces the very same record, which every
consumer of ``reservation-events`` drops as a duplicate.

Run: ``python -m urr_ticket_worker.payment`` (health on ``URR_HTTP__PORT``, default 3022).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections import OrderedDict
from typing import Any

from prometheus_client import CollectorRegistry

from urr_common.logs import get_logger
from urr_common.settings import load_settings
from urr_ticket_worker.kafka_loop import ConsumerMetrics, consume
from urr_ticket_worker.messages import (
    PAYMENT_EVENTS,
    RESERVATION_EVENTS,
    MalformedMessage,
    PaymentRequested,
    ReservationOutcome,
    outcome_message_id,
    parse_record,
)
from urr_ticket_worker.process import Heartbeat, LoopBody, ProducerHolder, run_process
from urr_ticket_worker.settings import PaymentProcessSettings, PaymentSettings, TicketWorkerSettings

_LOG = get_logger(__name__)
#: Request ids remembered to count duplicates (the answer is the same either way).
_SEEN_LIMIT = 10_000


def declines(reservation_id: uuid.UUID, decline_rate: float) -> bool:
    """Whether the stand-in declines this reservation: stable across redeliveries."""
    digest = hashlib.sha256(reservation_id.bytes).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < decline_rate


def decide(request: PaymentRequested, settings: PaymentSettings) -> ReservationOutcome:
    declined = declines(request.reservation_id, settings.decline_rate)
    status = "declined" if declined else "confirmed"
    return ReservationOutcome(
        message_id=outcome_message_id(request.reservation_id, status),
        event_id=request.event_id,
        user_id=request.user_id,
        reservation_id=request.reservation_id,
        status=status,
        reason="card_declined" if declined else None,
    )


class PaymentStandIn:
    def __init__(self, settings: PaymentSettings, producer: ProducerHolder) -> None:
        self._settings = settings
        self._producer = producer
        self._seen: OrderedDict[uuid.UUID, None] = OrderedDict()

    async def handle(self, record: Any) -> str:
        try:
            request = parse_record(PaymentRequested, record.value)
        except MalformedMessage as exc:
            _LOG.warning(
                "malformed_record", topic=record.topic, offset=record.offset, error=str(exc)
            )
            return "malformed"
        duplicate = request.message_id in self._seen
        if self._settings.delay_ms and not duplicate:
            await asyncio.sleep(self._settings.delay_ms / 1000)
        outcome = decide(request, self._settings)
        try:
            producer = await self._producer.get()
            await producer.send_and_wait(
                RESERVATION_EVENTS, outcome.to_json(), key=request.event_id.encode()
            )
        except Exception:
            await self._producer.reset()
            raise  # the consumer loop goes back to this record and retries
        self._seen[request.message_id] = None
        while len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        return "duplicate" if duplicate else "applied"


def payment_loop(settings: TicketWorkerSettings, registry: CollectorRegistry) -> LoopBody:
    metrics = ConsumerMetrics(registry)

    async def body(stop: asyncio.Event, beat: Heartbeat) -> None:
        producer = ProducerHolder(settings.kafka)
        stand_in = PaymentStandIn(settings.payment, producer)
        try:
            await consume(
                name="payment",
                kafka=settings.kafka,
                group_id=settings.consumers.payment_group,
                topics=[PAYMENT_EVENTS],
                handle=stand_in.handle,
                metrics=metrics,
                stop=stop,
                beat=beat,
                max_records=settings.consumers.max_records,
                fetch_max_wait_ms=settings.consumers.fetch_max_wait_ms,
            )
        finally:
            await producer.reset()

    return body


def main() -> None:
    settings = load_settings(PaymentProcessSettings)
    run_process(settings, "payment-stand-in", lambda registry: payment_loop(settings, registry))


if __name__ == "__main__":
    main()
