"""The stats consumer: counts ``transfer-events``, ``membership-events`` and ``queue-events``
per event in PostgreSQL (``event_stats``), once per message id; malformed records are skipped
and counted. The ticket API serves the counts at ``GET /api/v1/stats/{eventId}``.

Run: ``python -m urr_ticket_worker.stats`` (health on ``URR_HTTP__PORT``, default 3023).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from urr_common.logs import get_logger
from urr_common.settings import load_settings
from urr_ticket_worker.booking import count_many
from urr_ticket_worker.kafka_loop import ConsumerMetrics, consume
from urr_ticket_worker.messages import (
    MEMBERSHIP_EVENTS,
    QUEUE_EVENTS,
    TRANSFER_EVENTS,
    MalformedMessage,
    MembershipRecorded,
    QueueEvent,
    TicketTransferred,
    parse_record,
)
from urr_ticket_worker.process import Heartbeat, LoopBody, connect_postgres, run_process
from urr_ticket_worker.settings import StatsProcessSettings, TicketWorkerSettings

if TYPE_CHECKING:
    import asyncpg

_LOG = get_logger(__name__)
STATS_CONSUMER = "kafka:stats"
STATS_TOPICS = (TRANSFER_EVENTS, MEMBERSHIP_EVENTS, QUEUE_EVENTS)


def counted(topic: str, value: bytes | None) -> tuple[str, str, list[str]]:
    """(message id, event id, counters) for one record; ``MalformedMessage`` if invalid."""
    if topic == QUEUE_EVENTS:
        queued = parse_record(QueueEvent, value)
        return f"queue:{queued.id}", queued.event_id, [f"queue.{queued.type}"]
    if topic == TRANSFER_EVENTS:
        transfer = parse_record(TicketTransferred, value)
        return str(transfer.message_id), transfer.event_id, ["transfers"]
    if topic == MEMBERSHIP_EVENTS:
        member = parse_record(MembershipRecorded, value)
        return str(member.message_id), member.event_id, [f"membership.{member.type}"]
    raise MalformedMessage(f"unexpected topic {topic}")


class StatsCounter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def handle(self, records: list[Any]) -> list[str]:
        """Count a fetch's records in one transaction; what happened to each, in order."""
        outcomes: list[str | None] = []
        items: list[tuple[str, str, list[str]]] = []
        for record in records:
            try:
                items.append(counted(record.topic, record.value))
            except MalformedMessage as exc:
                _LOG.warning(
                    "malformed_record", topic=record.topic, offset=record.offset, error=str(exc)
                )
                outcomes.append("malformed")
                continue
            outcomes.append(None)  # decided by the transaction below
        applied = iter(await count_many(self._pool, STATS_CONSUMER, items))
        return [outcome or next(applied) for outcome in outcomes]


def stats_loop(settings: TicketWorkerSettings, registry: CollectorRegistry) -> LoopBody:
    metrics = ConsumerMetrics(registry)

    async def body(stop: asyncio.Event, beat: Heartbeat) -> None:
        pool = await connect_postgres(settings.postgres, stop, beat)
        if pool is None:
            return
        try:
            await consume(
                name="stats",
                kafka=settings.kafka,
                group_id=settings.consumers.stats_group,
                topics=STATS_TOPICS,
                handle=StatsCounter(pool).handle,
                batched=True,
                metrics=metrics,
                stop=stop,
                beat=beat,
                max_records=settings.consumers.max_records,
                fetch_max_wait_ms=settings.consumers.stats_fetch_max_wait_ms,
            )
        finally:
            await pool.close()

    return body


def main() -> None:
    settings = load_settings(StatsProcessSettings)
    run_process(settings, "stats-consumer", lambda registry: stats_loop(settings, registry))


if __name__ == "__main__":
    main()
