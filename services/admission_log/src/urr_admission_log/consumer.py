"""Appending ``queue-events`` admissions to the log: at least once, never twice.

Records are keyed by event, so one event's admissions arrive on one partition in the order
the queue published them. Each fetched batch is appended per event in one transaction, then
its offsets are committed; any failure restarts the consumer from the committed offsets, and
the record ids make the replay append nothing twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from urr_admission_log import heads, order_seed, prequeue, store
from urr_admission_log.leaves import TIER1_TYPES, admission_of, tier1_leaf_of, waivers_of
from urr_admission_log.order_seed import is_order_seed
from urr_admission_log.prequeue import is_prequeue
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.logs import get_logger
from urr_common.service import sleep_unless_stopped
from urr_common.tokens import SigningKey

_LOG = get_logger(__name__)


class LogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records = Counter(
            "urr_admission_log_records",
            "queue-events records seen by the admission log, by outcome "
            "(appended, duplicate, ignored, malformed, prequeue, order_seed).",
            ["outcome"],
            registry=registry,
        )
        self.heads = Counter(
            "urr_admission_log_heads_signed", "Tree heads signed.", registry=registry
        )
        self.last_append = Gauge(
            "urr_admission_log_last_append_timestamp_seconds",
            "When the log last appended a leaf (a log that stops growing shows here).",
            registry=registry,
        )
        self.last_head = Gauge(
            "urr_admission_log_last_head_timestamp_seconds",
            "When this process last signed a tree head; appends long after it are unsigned "
            "(published to nobody).",
            registry=registry,
        )
        self.failures = Counter(
            "urr_admission_log_failures",
            "Consumer or signer rounds that failed.",
            ["loop"],
            registry=registry,
        )


#: Record types that become leaves; any other type is skipped as ``ignored``.
LOGGED_TYPES = ("admitted", "waived", *TIER1_TYPES)


def admissions_by_event(
    values: Iterable[bytes | None], secret: bytes, metrics: LogMetrics
) -> dict[str, list[store.Record]]:
    """Decode a batch into per-event records, in order; other records are counted and skipped."""
    grouped: dict[str, list[store.Record]] = {}
    for value in values:
        try:
            decoded: Any = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            metrics.records.labels("malformed").inc()
            continue
        if is_prequeue(decoded) or is_order_seed(decoded):
            continue  # stored by ``store_prequeues`` / ``store_order_seeds``
        leaves = waivers_of(decoded)
        if leaves is None:
            admission = admission_of(decoded, secret) or tier1_leaf_of(decoded)
            leaves = [admission] if admission is not None else None
        if leaves is None:
            kind = (
                "ignored"
                if isinstance(decoded, dict) and decoded.get("type") not in LOGGED_TYPES
                else "malformed"
            )
            metrics.records.labels(kind).inc()
            continue
        for leaf in leaves:
            grouped.setdefault(leaf.event_id, []).append(leaf.record())
    return grouped


async def append_batch(
    pool: asyncpg.Pool, grouped: dict[str, list[store.Record]], metrics: LogMetrics
) -> None:
    for event_id, records in grouped.items():
        async with pool.acquire() as conn:
            appended = await store.append(conn, event_id, records)
        metrics.records.labels("appended").inc(appended.count)
        metrics.records.labels("duplicate").inc(len(records) - appended.count)
        if appended.count:
            metrics.last_append.set_to_current_time()


def _decoded(values: Iterable[bytes | None], wanted: Callable[[Any], bool]) -> list[dict[str, Any]]:
    """The batch's records ``wanted`` picks, in order (malformed JSON is counted elsewhere)."""
    found: list[dict[str, Any]] = []
    for value in values:
        try:
            decoded: Any = orjson.loads(value or b"")
        except orjson.JSONDecodeError:
            continue
        if wanted(decoded):
            found.append(decoded)
    return found


def prequeue_records(values: Iterable[bytes | None]) -> list[dict[str, Any]]:
    """The batch's pre-queue publications, in order."""
    return _decoded(values, is_prequeue)


async def store_prequeues(
    pool: asyncpg.Pool, records: list[dict[str, Any]], metrics: LogMetrics
) -> None:
    grouped, malformed = prequeue.group(records)
    metrics.records.labels("malformed").inc(malformed)
    for event_id, found in grouped.items():
        async with pool.acquire() as conn:
            await prequeue.store(conn, event_id, found)
    metrics.records.labels("prequeue").inc(len(records) - malformed)


def order_seed_records(values: Iterable[bytes | None]) -> list[dict[str, Any]]:
    """The batch's order-seed publications, in order."""
    return _decoded(values, is_order_seed)


async def store_order_seeds(
    pool: asyncpg.Pool, records: list[dict[str, Any]], metrics: LogMetrics
) -> None:
    if not records:
        return
    async with pool.acquire() as conn:
        malformed = await order_seed.store(conn, records)
    metrics.records.labels("malformed").inc(malformed)
    metrics.records.labels("order_seed").inc(len(records) - malformed)


async def consume(
    settings: AdmissionLogSettings, pool: asyncpg.Pool, metrics: LogMetrics, stop: asyncio.Event
) -> None:
    from urr_common.clients import kafka_consumer

    options = settings.admission_log
    secret = options.holder_secret.get_secret_value().encode()
    while not stop.is_set():
        consumer = kafka_consumer(
            settings.kafka,
            options.topic,
            client_id=f"{settings.kafka.client_id}-admission-log",
            group_id=options.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=options.fetch_max_wait_ms,
        )
        try:
            await consumer.start()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                if not batches:
                    continue
                values = [record.value for records in batches.values() for record in records]
                await append_batch(pool, admissions_by_event(values, secret, metrics), metrics)
                await store_prequeues(pool, prequeue_records(values), metrics)
                await store_order_seeds(pool, order_seed_records(values), metrics)
                await consumer.commit(
                    {partition: records[-1].offset + 1 for partition, records in batches.items()}
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Kafka or PostgreSQL failed: restart from committed offsets
            metrics.failures.labels("consumer").inc()
            _LOG.warning("admission_log_consumer_failed", error=f"{type(exc).__name__}: {exc}")
            await sleep_unless_stopped(stop, 1.0)
        finally:
            await consumer.stop()


async def sign_heads(
    settings: AdmissionLogSettings,
    pool: asyncpg.Pool,
    key: SigningKey,
    metrics: LogMetrics,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        try:
            async with pool.acquire() as conn:
                signed = await heads.sign_grown(conn, key, settings.tree_heads.issuer)
            metrics.heads.inc(len(signed))
            if signed:
                metrics.last_head.set_to_current_time()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.failures.labels("signer").inc()
            _LOG.warning("admission_log_signer_failed", error=f"{type(exc).__name__}: {exc}")
        await sleep_unless_stopped(stop, settings.admission_log.sign_every_s)
