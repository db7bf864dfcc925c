"""The payment stand-in: consumes ``payment-events``, answers on ``reservation-events``.

It stands in for an external payment provider. Its verdict is drawn from a server-side
random source (``secrets``; approve unless the draw falls under ``payment.decline_rate``)
the first time a reservation's request is seen, and recorded with the reservation
(``reservations.payment_verdict``, set only while empty): a redelivered request reads the
recorded verdict back, so the answer never changes, and nothing a client knows (the
reservation id included) predicts it. The answer's ``messageId`` is derived from the
reservation and the status, so a re-published answer is the very same record, which every
consumer of ``reservation-events`` drops as a duplicate.

Run: ``python -m urr_ticket_worker.payment`` (health on ``URR_HTTP__PORT``, default 3022).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry

from urr_common.logs import get_logger
from urr_common.settings import load_settings
from urr_ticket_worker.kafka_loop import ConsumerMetrics, consume, parse_or_log
from urr_ticket_worker.messages import (
    PAYMENT_EVENTS,
    RESERVATION_EVENTS,
    PaymentRequested,
    ReservationOutcome,
    outcome_message_id,
)
from urr_ticket_worker.process import (
    Heartbeat,
    LoopBody,
    ProducerHolder,
    connect_postgres,
    run_process,
)
from urr_ticket_worker.settings import PaymentProcessSettings, PaymentSettings, TicketWorkerSettings

if TYPE_CHECKING:
    import asyncpg

_LOG = get_logger(__name__)
#: Request ids remembered to count duplicates (the answer is the same either way).
_SEEN_LIMIT = 10_000


Verdict = Literal["approved", "declined"]
#: Resolution of a draw: 53 bits, as many as a float's mantissa holds.
_DRAW_BITS = 53


def draw_verdict(decline_rate: float) -> Verdict:
    """A fresh verdict from the operating system's random source: declined with probability
    ``decline_rate``. Never a function of anything a client sends or can see."""
    draw = secrets.randbits(_DRAW_BITS) / 2**_DRAW_BITS
    return "declined" if draw < decline_rate else "approved"


async def record_verdict(
    pool: asyncpg.Pool, reservation_id: uuid.UUID, drawn: Verdict
) -> Verdict | None:
    """Record ``drawn`` unless the reservation already has a verdict; returns the recorded
    one (the first draw wins: a redelivery finds it), or None for an unknown reservation."""
    recorded = await pool.fetchval(
        "UPDATE reservations SET payment_verdict = coalesce(payment_verdict, $2)"
        " WHERE reservation_id = $1 RETURNING payment_verdict",
        reservation_id,
        drawn,
    )
    return None if recorded is None else ("declined" if recorded == "declined" else "approved")


def answer(request: PaymentRequested, verdict: Verdict | None) -> ReservationOutcome:
    """The ``reservation-events`` record for ``verdict`` (None: no such reservation)."""
    declined = verdict != "approved"
    status = "declined" if declined else "confirmed"
    reason = None
    if verdict is None:
        reason = "unknown_reservation"
    elif declined:
        reason = "card_declined"
    return ReservationOutcome(
        message_id=outcome_message_id(request.reservation_id, status),
        event_id=request.event_id,
        user_id=request.user_id,
        reservation_id=request.reservation_id,
        status=status,
        reason=reason,
    )


class PaymentStandIn:
    def __init__(
        self, settings: PaymentSettings, producer: ProducerHolder, pool: asyncpg.Pool
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._pool = pool
        self._seen: OrderedDict[uuid.UUID, None] = OrderedDict()

    async def handle(self, record: Any) -> str:
        request = parse_or_log(PaymentRequested, record)
        if request is None:
            return "malformed"
        duplicate = request.message_id in self._seen
        if self._settings.delay_ms and not duplicate:
            await asyncio.sleep(self._settings.delay_ms / 1000)
        verdict = await record_verdict(
            self._pool, request.reservation_id, draw_verdict(self._settings.decline_rate)
        )
        outcome = answer(request, verdict)
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
        pool = await connect_postgres(settings.postgres, stop, beat)
        if pool is None:
            return
        producer = ProducerHolder(settings.kafka)
        stand_in = PaymentStandIn(settings.payment, producer, pool)
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
                session_timeout_ms=settings.consumers.session_timeout_ms,
                heartbeat_interval_ms=settings.consumers.heartbeat_interval_ms,
            )
        finally:
            await producer.reset()
            await pool.close()

    return body


def main() -> None:
    settings = load_settings(PaymentProcessSettings)
    run_process(settings, "payment-stand-in", lambda registry: payment_loop(settings, registry))


if __name__ == "__main__":
    main()
