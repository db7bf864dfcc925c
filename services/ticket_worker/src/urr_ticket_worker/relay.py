"""The outbox relay process: publishes outbox rows to Kafka in order and marks them sent;
also expires reservations whose payment (or processing) deadline has passed.

Kafka down: rounds fail, rows stay unsent, the relay retries every ``relay.retry_s`` with a
fresh producer; when Kafka is back they go out in id order. Nothing is dropped.

Run: ``python -m urr_ticket_worker.relay`` (health on ``URR_HTTP__PORT``, default 3021).
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry, Counter, Gauge

from urr_common.logs import get_logger
from urr_common.service import sleep_unless_stopped
from urr_common.settings import load_settings
from urr_ticket_worker.booking import expire_overdue
from urr_ticket_worker.outbox import OutboxPublisher
from urr_ticket_worker.process import (
    Heartbeat,
    LoopBody,
    ProducerHolder,
    connect_postgres,
    run_process,
)
from urr_ticket_worker.settings import RelayProcessSettings, TicketWorkerSettings

_LOG = get_logger(__name__)


class RelayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "urr_outbox_published", "Outbox rows published to Kafka.", registry=registry
        )
        self.failures = Counter(
            "urr_outbox_publish_failures",
            "Relay rounds stopped by a Kafka error.",
            registry=registry,
        )
        self.unsent = Gauge(
            "urr_outbox_unsent", "Outbox rows not yet published.", registry=registry
        )
        self.expired = Counter(
            "urr_reservations_expired",
            "Reservations expired past their deadline.",
            registry=registry,
        )


def relay_loop(settings: TicketWorkerSettings, registry: CollectorRegistry) -> LoopBody:
    metrics = RelayMetrics(registry)
    relay = settings.relay

    async def body(stop: asyncio.Event, beat: Heartbeat) -> None:
        pool = await connect_postgres(settings.postgres, stop, beat)
        if pool is None:
            return
        producer = ProducerHolder(settings.kafka)
        publisher = OutboxPublisher(pool, batch_size=relay.batch_size)
        next_expiry = 0.0
        try:
            while not stop.is_set():
                more = False
                try:
                    if time.monotonic() >= next_expiry:
                        next_expiry = time.monotonic() + relay.expire_every_s
                        metrics.expired.inc(await expire_overdue(pool))
                        metrics.unsent.set(await publisher.unsent())
                    result = await publisher.publish_once(await producer.get())
                    metrics.published.inc(result.sent)
                    error, more = result.error, result.more
                except Exception as exc:  # Kafka unreachable at start, or PostgreSQL blipped
                    error = exc
                if error is not None:
                    metrics.failures.inc()
                    beat.failed(error)
                    _LOG.warning("relay_round_failed", error=repr(error))
                    await producer.reset()
                    await sleep_unless_stopped(stop, relay.retry_s)
                    continue
                beat.ok()
                if not more:
                    await sleep_unless_stopped(stop, relay.idle_poll_s)
        finally:
            await producer.reset()
            await pool.close()

    return body


def main() -> None:
    settings = load_settings(RelayProcessSettings)
    run_process(settings, "outbox-relay", lambda registry: relay_loop(settings, registry))


if __name__ == "__main__":
    main()
