"""A Kafka consumer loop with manual commits, at-least-once, for the booking consumers.

Records are handled one by one in partition order; offsets are committed after each batch.
A record that cannot be handled because a dependency failed (PostgreSQL down) is not skipped:
the consumer seeks back to it and retries after a pause. Duplicates and malformed records are
the handler's business (it records message ids and returns ``duplicate`` or ``malformed``);
every outcome is counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter

from urr_common.logs import get_logger
from urr_common.service import sleep_unless_stopped
from urr_common.settings import KafkaSettings
from urr_ticket_worker.messages import MalformedMessage, RecordT, parse_record
from urr_ticket_worker.process import Heartbeat

_LOG = get_logger(__name__)

#: Handles one ``aiokafka.ConsumerRecord``; returns what happened (a metric label).
RecordHandler = Callable[[Any], Awaitable[str]]
#: Handles a fetch's records at once, all or none; what happened to each, in order.
BatchHandler = Callable[[list[Any]], Awaitable[list[str]]]


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "urr_booking_consumer_records",
            "Kafka records seen by the booking consumers, by outcome "
            "(applied, duplicate, rejected, malformed).",
            ["consumer", "topic", "outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "urr_booking_consumer_retries",
            "Times a consumer went back to an unhandled record after a dependency failed.",
            ["consumer"],
            registry=registry,
        )


def parse_or_log(model: type[RecordT], record: Any) -> RecordT | None:
    """The record's value as ``model``, or None (logged) when malformed: the handler then
    answers ``malformed`` and the loop moves on."""
    try:
        return parse_record(model, record.value)
    except MalformedMessage as exc:
        _LOG.warning("malformed_record", topic=record.topic, offset=record.offset, error=str(exc))
        return None


async def consume(
    *,
    name: str,
    kafka: KafkaSettings,
    group_id: str,
    topics: Sequence[str],
    handle: RecordHandler | BatchHandler,
    metrics: ConsumerMetrics,
    stop: asyncio.Event,
    beat: Heartbeat,
    max_records: int = 100,
    retry_s: float = 1.0,
    fetch_max_wait_ms: int = 100,
    batched: bool = False,
    session_timeout_ms: int = 10_000,
    heartbeat_interval_ms: int = 3_000,
) -> None:
    """Consume ``topics`` in group ``group_id`` until ``stop``; reconnects when Kafka fails.

    ``batched``: ``handle`` is a ``BatchHandler`` that takes each fetch's records at once
    (one transaction for them all); a failure retries the whole fetch.
    """
    from aiokafka.errors import KafkaError

    from urr_common.clients import kafka_consumer

    while not stop.is_set():
        consumer = kafka_consumer(
            kafka,
            *topics,
            client_id=f"{kafka.client_id}-{name}",
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=fetch_max_wait_ms,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            # Not the producer's short timeout: a JoinGroup waits for the broker's initial
            # rebalance delay (seconds), and timing it out would retry forever.
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            beat.failed(exc)
            _LOG.warning("kafka_consumer_start_failed", consumer=name, error=repr(exc))
            await consumer.stop()
            await sleep_unless_stopped(stop, retry_s)
            continue
        except BaseException:  # cancelled while joining: close before leaving
            await asyncio.shield(consumer.stop())
            raise
        try:
            apply = (
                _all_at_once(cast(BatchHandler, handle), name, metrics)
                if batched
                else _one_by_one(cast(RecordHandler, handle), name, metrics)
            )
            await _run(consumer, name, apply, metrics, stop, beat, max_records, retry_s)
        except KafkaError as exc:
            beat.failed(exc)
            _LOG.warning("kafka_consumer_failed", consumer=name, error=repr(exc))
            await sleep_unless_stopped(stop, retry_s)
        finally:
            await consumer.stop()


#: Handles one fetch (records by partition): the next offset per partition it finished, and
#: the exception that stopped it, if any.
FetchHandler = Callable[[dict[Any, list[Any]]], Awaitable[tuple[dict[Any, int], Exception | None]]]


def _one_by_one(handle: RecordHandler, name: str, metrics: ConsumerMetrics) -> FetchHandler:
    async def apply(batches: dict[Any, list[Any]]) -> tuple[dict[Any, int], Exception | None]:
        done: dict[Any, int] = {}
        for partition, records in batches.items():
            for record in records:
                try:
                    outcome = await handle(record)
                except Exception as exc:  # a dependency failed: retry from this record
                    return done, exc
                metrics.records.labels(name, record.topic, outcome).inc()
                done[partition] = record.offset + 1
        return done, None

    return apply


def _all_at_once(handle: BatchHandler, name: str, metrics: ConsumerMetrics) -> FetchHandler:
    async def apply(batches: dict[Any, list[Any]]) -> tuple[dict[Any, int], Exception | None]:
        records = [record for part in batches.values() for record in part]
        if not records:
            return {}, None
        try:
            outcomes = await handle(records)
        except Exception as exc:  # a dependency failed: retry the whole fetch
            return {}, exc
        for record, outcome in zip(records, outcomes, strict=True):
            metrics.records.labels(name, record.topic, outcome).inc()
        return {partition: part[-1].offset + 1 for partition, part in batches.items()}, None

    return apply


async def _run(
    consumer: Any,
    name: str,
    apply: FetchHandler,
    metrics: ConsumerMetrics,
    stop: asyncio.Event,
    beat: Heartbeat,
    max_records: int,
    retry_s: float,
) -> None:
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
        done, failed = await apply(batches)
        if done:
            await consumer.commit(done)
        if failed is None:
            beat.ok()
            continue
        beat.failed(failed)
        metrics.retries.labels(name).inc()
        _LOG.warning("record_retry", consumer=name, error=repr(failed))
        for partition, records in batches.items():
            consumer.seek(partition, done.get(partition, records[0].offset))
        await sleep_unless_stopped(stop, retry_s)
