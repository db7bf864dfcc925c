"""The ticket API application: catalog, seat map, holds, reservations, stats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_common.clients import open_aws_clients, open_postgres, open_redis
from urr_common.logs import get_logger
from urr_common.service import READINESS_KEY, REGISTRY_KEY, create_service_app
from urr_common.upstream_security import identity_middleware
from urr_ticket import routes, site
from urr_ticket.appkeys import (
    COMMANDS_KEY,
    LOCKS_KEY,
    METRICS_KEY,
    RESERVATION_IDS_KEY,
    SEAT_MAPS_KEY,
    STORE_KEY,
    TICKET_SETTINGS_KEY,
    TicketMetrics,
)
from urr_ticket.commands import CommandQueue, ReservationIds
from urr_ticket.seat_locks import SeatLocks
from urr_ticket.seat_map import SeatMaps
from urr_ticket.settings import TicketSettings
from urr_ticket.store import BookingStore
from urr_ticket_worker.schema import migrate

_LOG = get_logger(__name__)
#: This service's name in the gateway's routing table: the ``aud`` of assertions it accepts.
AUDIENCE = "ticket"


def create_app(
    settings: TicketSettings, *, registry: CollectorRegistry | None = None
) -> web.Application:
    app = create_service_app(
        settings,
        registry=registry,
        middlewares=[
            identity_middleware(settings.identity.verifier(AUDIENCE)),
            routes.seat_holds_unavailable,
        ],
    )
    app[TICKET_SETTINGS_KEY] = settings
    app[METRICS_KEY] = TicketMetrics(app[REGISTRY_KEY])
    app[RESERVATION_IDS_KEY] = ReservationIds.from_settings(
        settings.reservation_ids, settings.environment
    )
    if settings.reservation_ids.key is None:
        _LOG.warning(
            "reservation_id_key_generated",
            detail="URR_RESERVATION_IDS__KEY is unset: this process uses a random key, so"
            " replicas and restarts derive different ids for a repeated request",
        )
    app.cleanup_ctx.append(_clients)
    routes.add_routes(app)
    site.add_site_routes(app)
    return app


async def _clients(app: web.Application) -> AsyncIterator[None]:
    settings = app[TICKET_SETTINGS_KEY]
    readiness = app[READINESS_KEY]
    async with (
        # Single statements only (no SET, LISTEN, session locks or cursors; the migration
        # and the seed run in transactions): no reset round trip after each of them.
        open_postgres(settings.postgres, reset_sessions=False) as pool,
        open_redis(settings.redis) as redis,
        open_aws_clients(settings.aws, "sqs") as aws,
    ):
        applied = await migrate(pool)
        if applied:
            _LOG.info("migrations_applied", names=applied)
        app[STORE_KEY] = BookingStore(pool)
        lean = (
            settings.seat_holds_client == "lean"
            and not settings.redis.cluster
            and settings.redis.max_connections >= 2
        )
        locks = SeatLocks(redis, lane_timeout_s=settings.redis.socket_timeout_s if lean else None)
        app[LOCKS_KEY] = locks
        app[SEAT_MAPS_KEY] = SeatMaps(app[STORE_KEY], app[LOCKS_KEY])
        commands = CommandQueue(
            aws["sqs"],
            settings.sqs.queue_name,
            batch_window_s=settings.sqs.send_batch_window_s,
            max_calls=settings.sqs.send_max_calls,
        )
        app[COMMANDS_KEY] = commands

        async def check_postgres() -> None:
            await pool.fetchval("SELECT 1")

        async def check_redis() -> None:
            await redis.ping()

        async def check_sqs() -> Any:
            await commands.url()

        readiness.add_check("postgres", check_postgres)
        readiness.add_check("redis", check_redis)
        readiness.add_check("sqs", check_sqs)
        yield
        await commands.drain()
        await locks.aclose()
