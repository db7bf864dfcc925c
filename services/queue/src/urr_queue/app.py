"""The queue service's application factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from urr_common.clients import kafka_consumer, open_kafka_producer, open_redis
from urr_common.logs import get_logger
from urr_common.problems import ServiceUnavailable
from urr_common.service import READINESS_KEY, REGISTRY_KEY, create_service_app
from urr_common.upstream_security import identity_middleware, internal_app, no_internal_routes
from urr_queue import admin, handlers
from urr_queue.admission import AdmissionLoop
from urr_queue.apidocs.routes import add_api_docs
from urr_queue.console.routes import setup_console
from urr_queue.context import QUEUE_CONTEXT, QueueContext
from urr_queue.entry import EntryTokens
from urr_queue.events import ProducerFactory, QueueEventPublisher
from urr_queue.metrics import EventGauges, FiguresRefresher, QueueMetrics
from urr_queue.outbox import OutboxRelay
from urr_queue.reservations import ConsumerFactory, ReservationEventsConsumer
from urr_queue.sessions import SessionEnder
from urr_queue.settings import QueueSettings
from urr_queue.store import QueueStore
from urr_queue.tier1 import Tier1Checker
from urr_queue.tier1_marks import SpentPlaceMarker, SpentPlaceTable, open_dynamodb

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

_LOG = get_logger(__name__)
#: This service's name in the gateway's routing table: the ``aud`` of assertions it accepts.
AUDIENCE = "queue"
ADMISSION_LOOP = web.AppKey("urr_queue_admission", AdmissionLoop)
#: Time the publisher gets at shutdown to hand its buffer to Kafka.
_PUBLISHER_DRAIN_S = 2.0

RedisFactory = Callable[[], AbstractAsyncContextManager["Redis | RedisCluster"]]
#: Opens the aioboto3 DynamoDB client the spent-place marker writes with (tests pass their own).
DynamoFactory = Callable[[], AbstractAsyncContextManager[Any]]


def _kafka_consumer_factory(settings: QueueSettings) -> ConsumerFactory:
    @asynccontextmanager
    async def open_consumer() -> AsyncIterator[Any]:
        block = settings.reservation_events
        consumer = kafka_consumer(
            settings.kafka,
            block.topic,
            group_id=block.group_id,
            enable_auto_commit=False,
            auto_offset_reset=block.auto_offset_reset,
        )
        try:
            await consumer.start()
            yield consumer
        finally:
            # Also after a failed start: it leaves connections behind otherwise.
            await consumer.stop()

    return open_consumer


@web.middleware
async def redis_unavailable_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Redis down or slow: a 503 the page retries, never a 500."""
    try:
        return await handler(request)
    except RedisError as exc:
        _LOG.warning("redis_unavailable", path=request.path, error=f"{type(exc).__name__}: {exc}")
        raise ServiceUnavailable(
            "the queue is briefly unavailable; try again in a moment",
            code="queue_unavailable",
            headers={"Retry-After": "2"},
        ) from exc


def create_app(
    settings: QueueSettings,
    *,
    registry: CollectorRegistry | None = None,
    redis_factory: RedisFactory | None = None,
    producer_factory: ProducerFactory | None = None,
    consumer_factory: ConsumerFactory | None = None,
    dynamodb_factory: DynamoFactory | None = None,
) -> web.Application:
    """The queue application; clients open in ``cleanup_ctx`` (factories are for tests)."""
    app = create_service_app(
        settings,
        registry=registry,
        middlewares=[
            no_internal_routes,
            identity_middleware(settings.identity.verifier(AUDIENCE)),
            redis_unavailable_middleware,
        ],
    )
    metrics = QueueMetrics.register(app[REGISTRY_KEY])
    gauges = EventGauges(app[REGISTRY_KEY])
    tokens = EntryTokens.from_settings(settings.entry_tokens)
    trust = settings.vwr_trust
    tier1 = Tier1Checker(
        trust.public_key_files,
        issuer=trust.issuer,
        audience=trust.audience,
        leeway_s=trust.leeway_s,
    )
    if producer_factory is None and settings.queue_events.enabled:
        producer_factory = _default_producer_factory(settings)
    if consumer_factory is None and settings.reservation_events.enabled:
        consumer_factory = _kafka_consumer_factory(settings)
    publisher = QueueEventPublisher(
        settings.queue_events.topic,
        buffer_size=settings.queue_events.buffer_size,
        metrics=metrics,
        producer_factory=producer_factory,
        retry_delay_s=settings.queue_events.retry_delay_s,
    )

    if dynamodb_factory is None and (settings.tier1_places.enabled or settings.console.enabled):
        dynamodb_factory = _default_dynamodb_factory(settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        opener = redis_factory or (lambda: open_redis(settings.redis))
        async with opener() as redis, AsyncExitStack() as clients:
            store = QueueStore(
                redis,
                heartbeat_bucket_ms=settings.heartbeat_bucket_ms,
                max_in_flight=settings.redis.max_connections,
                lane_timeout_s=_lane_timeout(settings),
            )
            ender = SessionEnder(store, publisher, metrics)
            app[QUEUE_CONTEXT] = QueueContext(
                settings=settings,
                store=store,
                tokens=tokens,
                tier1=tier1,
                publisher=publisher,
                metrics=metrics,
                ender=ender,
            )
            app[READINESS_KEY].add_check("redis", store.ping)
            # The admission log's records go through the outbox whenever there is a broker to
            # relay them to; without one no record is written (nor published).
            outbox_cap = settings.outbox.max_len if producer_factory is not None else 0
            store.outbox_records = producer_factory is not None
            loop = AdmissionLoop(
                store, publisher, metrics, settings.admission, outbox_cap=outbox_cap
            )
            app[ADMISSION_LOOP] = loop
            tasks: list[asyncio.Task[None]] = []
            publisher_task = asyncio.create_task(publisher.run(), name="queue-events")
            if producer_factory is not None:
                relay = OutboxRelay(
                    redis,
                    topic=settings.queue_events.topic,
                    settings=settings.outbox,
                    metrics=metrics,
                    producer_factory=producer_factory,
                )
                tasks.append(asyncio.create_task(relay.run(), name="admission-outbox"))
            if settings.admission.enabled:
                tasks.append(asyncio.create_task(loop.run_forever(), name="admission"))
            if settings.figures.enabled:
                refresher = FiguresRefresher(store, gauges, settings.figures.interval_s)
                tasks.append(asyncio.create_task(refresher.run_forever(), name="figures"))
            if consumer_factory is not None:
                consumer = ReservationEventsConsumer(
                    ender,
                    metrics,
                    consumer_factory,
                    dedupe_ttl_s=settings.reservation_events.dedupe_ttl_s,
                    retry_delay_s=settings.reservation_events.retry_delay_s,
                )
                tasks.append(asyncio.create_task(consumer.run(), name="reservation-events"))
            if dynamodb_factory is not None and settings.tier1_places.enabled:
                dynamodb = await clients.enter_async_context(dynamodb_factory())
                table = SpentPlaceTable(
                    dynamodb,
                    settings.tier1_places.table,
                    lean=settings.tier1_places.client == "lean",
                )
                clients.push_async_callback(table.close)
                marker = SpentPlaceMarker(store, table, metrics, settings.tier1_places)
                tasks.append(asyncio.create_task(marker.run_forever(), name="tier1-marks"))
            try:
                yield
            finally:
                await _stop(tasks)
                await publisher.drain(_PUBLISHER_DRAIN_S)
                await _stop([publisher_task])
                await store.aclose()

    app.cleanup_ctx.append(lifecycle)
    _routes(app)
    internal_app(settings.internal.callers, _internal_routes, public=app)
    setup_console(app, settings.console, dynamodb_factory)
    add_api_docs(app)
    return app


def _lane_timeout(settings: QueueSettings) -> float | None:
    """The store's lane timeout (redis-py's ``socket_timeout``), or ``None`` for redis-py's
    commands: when asked, or when the pool's only connection would be the lane's."""
    if settings.store_client != "lean" or settings.redis.max_connections < 2:
        return None
    return settings.redis.socket_timeout_s


def _default_dynamodb_factory(settings: QueueSettings) -> DynamoFactory:
    return lambda: open_dynamodb(settings.aws)


def _default_producer_factory(settings: QueueSettings) -> ProducerFactory:
    def open_producer() -> AbstractAsyncContextManager[Any]:
        return open_kafka_producer(settings.kafka)

    return open_producer


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _routes(app: web.Application) -> None:
    queue = "/api/v1/queue/{eventId}"
    app.router.add_post(f"{queue}/enter", handlers.enter)
    app.router.add_get(f"{queue}/status", handlers.status)
    app.router.add_post(f"{queue}/leave", handlers.leave)
    app.router.add_get(f"{queue}/capacity", handlers.capacity)
    event_admin = "/api/v1/admin/queue/{eventId}"
    app.router.add_get(event_admin, admin.get_event)
    app.router.add_put(event_admin, admin.put_event)
    app.router.add_patch(event_admin, admin.put_event)
    app.router.add_delete(event_admin, admin.delete_event)
    app.router.add_post(f"{event_admin}/prequeue/reveal", admin.reveal_prequeue)
    app.router.add_post(f"{event_admin}/order-seed/reveal", admin.reveal_order_seed)
    app.router.add_get("/.well-known/jwks.json", handlers.jwks)


def _internal_routes(app: web.Application) -> None:
    """Served only on the internal listener, to callers named in ``URR_INTERNAL__CALLERS``."""
    app.router.add_post("/internal/v1/queue/{eventId}/complete", handlers.complete)
    # Event set-up by a trusted service (the demo seed), same rules as the admin API's PUT.
    app.router.add_put("/internal/v1/queue/{eventId}/config", admin.put_event)
