"""The SQS FIFO worker Lambda: booking commands -> PostgreSQL, one transaction per message.

powertools' sync ``SqsFifoPartialProcessor`` walks the batch in order; with
``skip_group_on_error`` a failed message fails the rest of its message group (their order is
kept: SQS redelivers them after it) while other groups go on. powertools has no async FIFO
processor, and ``asyncio.run`` per invocation would orphan a cached asyncpg pool or aiokafka
producer, so one module-level ``asyncio.Runner`` keeps a single event loop for the life of the
container and every invocation runs its coroutines on it.

A malformed body raises: the record is reported failed, SQS retries it, and after
``maxReceiveCount`` receives moves it to the dead-letter queue. The handler never crashes on
one (no crash loop) and never blocks other groups with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.batch import SqsFifoPartialProcessor, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from urr_common.logs import get_logger
from urr_common.settings import load_settings
from urr_ticket_worker.booking import apply_command
from urr_ticket_worker.messages import MalformedMessage, parse_command
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
    pool: asyncpg.Pool | None = None
    producer: AIOKafkaProducer | None = None


#: The one event loop of this container, shared by every invocation (created on first use).
_RUNNER: asyncio.Runner | None = None
_RESOURCES: _Resources | None = None
_PROCESSOR = SqsFifoPartialProcessor(skip_group_on_error=True)
# A batch whose every record failed is still answered with batchItemFailures (not raised), so
# the event source and the local poller handle one shape.
_PROCESSOR.raise_on_entire_batch_failure = False


def _runner() -> asyncio.Runner:
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = asyncio.Runner()
    return _RUNNER


def configure(settings: TicketWorkerSettings) -> None:
    """Use ``settings`` instead of the environment (the local poller and tests call this)."""
    global _RESOURCES
    close()
    _RESOURCES = _Resources(settings)


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
        import asyncpg

        pg = resources.settings.postgres
        pool = await asyncpg.create_pool(
            pg.dsn.get_secret_value(),
            min_size=pg.min_connections,
            max_size=pg.max_connections,
            command_timeout=pg.command_timeout_s,
        )
        try:
            await migrate(pool)
        except BaseException:
            await pool.close()
            raise
        resources.pool = pool
    return resources.pool


async def _apply(message_id: str, body: str) -> str:
    command = parse_command(body)
    resources = _resources()
    pool = await _pool(resources)
    result = await apply_command(pool, message_id, command, resources.settings.booking)
    _LOG.info(
        "command_applied",
        message_id=message_id,
        type=command.type,
        reservation_id=str(command.reservation_id),
        result=result,
    )
    return result


def record_handler(record: SQSRecord) -> str:
    """Apply one SQS record; raises (so the record fails and is retried) when it cannot."""
    try:
        return _runner().run(_apply(record.message_id, record.body))
    except MalformedMessage as exc:
        _LOG.warning("malformed_command", message_id=record.message_id, error=str(exc))
        raise


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
    """The Lambda entry point (SQS event source with ReportBatchItemFailures)."""
    response = process_partial_response(
        event=event,
        record_handler=record_handler,
        processor=_PROCESSOR,
        context=context,
    )
    _runner().run(_flush_outbox())
    return response
