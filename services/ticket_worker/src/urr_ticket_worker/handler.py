"""The SQS FIFO worker Lambda: booking commands -> PostgreSQL, one transaction per batch.

``urr_ticket_worker.batch`` applies the batch's records in order in one transaction with a
savepoint per message: a failed message fails itself and the rest of its message group in the
batch (their order is kept: SQS redelivers them after it) while other groups go on and commit.
Groups are ``<eventId>:<userId>`` (see the README), so a poison message holds one buyer's
commands, not a sale. powertools has no async FIFO processor, and ``asyncio.run`` per
invocation would orphan a cached asyncpg pool or aiokafka producer, so one module-level
``asyncio.Runner`` keeps a single event loop for the life of the container and every
invocation runs its coroutines on it.

A malformed body fails: the record is reported failed, SQS retries it, and after
``maxReceiveCount`` receives moves it to the dead-letter queue. The handler never crashes on
one (no crash loop) and never blocks other groups with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from urr_common.logs import get_logger
from urr_common.settings import load_settings
from urr_ticket_worker.batch import BatchItem, BatchOutcome, apply_batch
from urr_ticket_worker.metrics import BatchReport, WorkerMetrics, emit_emf, queue_waits
from urr_ticket_worker.outbox import OutboxPublisher
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.settings import TicketWorkerSettings

if TYPE_CHECKING:
    import asyncpg
    from aiokafka import AIOKafkaProducer
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.typing import LambdaContext

_LOG = get_logger(__name__)


@dataclass
class _Resources:
    settings: TicketWorkerSettings
    #: Prometheus metrics of the process running the handler (the local poller); None in a
    #: Lambda, where the figures leave as EMF.
    metrics: WorkerMetrics | None = None
    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None


#: The one event loop of this container, shared by every invocation (created on first use).
_RUNNER: asyncio.Runner | None = None
_RESOURCES: _Resources | None = None


def _runner() -> asyncio.Runner:
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = asyncio.Runner()
    return _RUNNER


def configure(settings: TicketWorkerSettings, metrics: WorkerMetrics | None = None) -> None:
    """Use ``settings`` instead of the environment (the local poller and tests call this),
    and report each batch on ``metrics``."""
    global _RESOURCES
    close()
    _RESOURCES = _Resources(settings, metrics)


def close() -> None:
    """Close the pool, the producer and the loop (process exit; tests between cases)."""
    global _RESOURCES, _RUNNER
    if _RESOURCES is not None and _RUNNER is not None:
        _RUNNER.run(_close_clients(_RESOURCES))
    _RESOURCES = None
    if _RUNNER is not None:
        _RUNNER.close()
        _RUNNER = None


async def _close_clients(resources: _Resources) -> None:
    if resources.producer is not None:
        with contextlib.suppress(Exception):
            await resources.producer.stop()
        resources.producer = None
    if resources.pool is not None:
        await resources.pool.close()
        resources.pool = None


def _resources() -> _Resources:
    global _RESOURCES
    if _RESOURCES is None:
        _RESOURCES = _Resources(load_settings(TicketWorkerSettings))
    return _RESOURCES


async def _pool(resources: _Resources) -> asyncpg.Pool:
    if resources.pool is None:
        from urr_common.clients import create_postgres_pool

        pool = await create_postgres_pool(resources.settings.postgres)
        try:
            await migrate(pool)
        except BaseException:
            await pool.close()
            raise
        resources.pool = pool
    return resources.pool


def batch_items(event: dict[str, Any]) -> list[BatchItem]:
    """The records of an SQS event, in order."""
    return [
        BatchItem(
            message_id=str(record["messageId"]),
            group=str(record.get("attributes", {}).get("MessageGroupId", "")),
            body=str(record.get("body", "")),
        )
        for record in event.get("Records", [])
    ]


async def _apply(items: list[BatchItem]) -> BatchOutcome:
    """What the batch did (every record failed when PostgreSQL cannot be reached)."""
    resources = _resources()
    try:
        pool = await _pool(resources)
    except Exception as exc:
        _LOG.warning("postgres_unavailable", error=repr(exc))
        return BatchOutcome(failed=[item.message_id for item in items])
    return await apply_batch(pool, items, resources.settings.booking)


async def _flush_outbox() -> None:
    """Publish what this batch wrote, best effort and bounded; the relay is the guarantee."""
    resources = _resources()
    relay = resources.settings.relay
    if not relay.flush_after_batch or resources.pool is None:
        return
    try:
        async with asyncio.timeout(relay.flush_timeout_s):
            if resources.producer is None:
                from urr_common.clients import kafka_producer

                producer = kafka_producer(
                    resources.settings.kafka.model_copy(update={"linger_ms": 0})
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                resources.producer = producer
            publisher = OutboxPublisher(resources.pool, batch_size=relay.batch_size)
            result = await publisher.publish_once(resources.producer)
            if result.error is not None:
                raise result.error
    except Exception as exc:  # Kafka down or slow: the rows wait for the relay
        _LOG.info("outbox_flush_skipped", error=repr(exc))
        if resources.producer is not None:
            with contextlib.suppress(Exception):
                await resources.producer.stop()
            resources.producer = None


def lambda_handler(
    event: dict[str, Any], context: LambdaContext | None
) -> PartialItemFailureResponse:
    """The Lambda entry point (SQS event source with ReportBatchItemFailures). A batch whose
    every record failed is still answered with batchItemFailures (not raised), so the event
    source and the local poller handle one shape."""
    started = time.perf_counter()
    records = event.get("Records", [])
    waits = queue_waits(records, time.time_ns() // 1_000_000)
    outcome = _runner().run(_apply(batch_items(event)))
    failed = outcome.failed
    if failed:
        _LOG.info("batch_item_failures", failed=len(failed))
    _runner().run(_flush_outbox())
    _report(
        BatchReport(
            size=len(records),
            results=Counter(outcome.results.values()),
            failed=len(failed),
            seconds=time.perf_counter() - started,
            waits=tuple(waits),
        )
    )
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}


def _report(report: BatchReport) -> None:
    metrics = _resources().metrics
    if metrics is not None:
        metrics.record(report)
    elif "AWS_LAMBDA_FUNCTION_NAME" in os.environ:
        emit_emf(report)
