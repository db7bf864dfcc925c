"""Seeding demo events: the catalog rows and seat map in PostgreSQL (idempotent), then the
event's Tier-2 queue settings through the queue service's admin API.

``python -m urr_ticket seed`` seeds ``demo`` (100 seats, A1-J10). The queue call is
tolerant: the queue service may still be starting, so it is retried, and a failure is
reported clearly without failing the seed (the catalog is usable; rerun to configure).
"""

from __future__ import annotations

import asyncio
import string
from dataclasses import dataclass
from typing import Any

import aiohttp

from urr_common.clients import open_postgres
from urr_common.logs import get_logger
from urr_common.upstream_security import ServiceCredentialSettings
from urr_ticket.settings import QueueAdminSettings, TicketSettings
from urr_ticket_worker.schema import migrate

_LOG = get_logger(__name__)


@dataclass(frozen=True)
class DemoEvent:
    event_id: str = "demo"
    name: str = "URR demo concert"
    venue: str = "Loopback Hall"
    rows: int = 10
    seats_per_row: int = 10
    #: The event's seat cap per account and hold length; None keeps what the event has
    #: (the schema's defaults, 4 seats and 300 s, for a new event).
    max_seats_per_user: int | None = None
    hold_seconds: int | None = None

    def seats(self) -> list[tuple[str, str, int, int]]:
        """(seat id, row, number, price in cents): front rows cost more."""
        out: list[tuple[str, str, int, int]] = []
        for index, row in enumerate(string.ascii_uppercase[: self.rows]):
            price = 15_000 if index < 2 else 9_000 if index < 6 else 6_000
            out.extend((f"{row}{n}", row, n, price) for n in range(1, self.seats_per_row + 1))
        return out


@dataclass(frozen=True)
class QueueConfig:
    """The body of ``PUT /api/v1/admin/queue/{eventId}`` (the queue service's contract)."""

    capacity: int = 50
    admit_per_second: float = 5.0
    session_seconds: int = 900
    idle_timeout_seconds: int = 60
    require_tier1_token: bool = False
    mode: str = "queue"

    def body(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "admit_per_second": self.admit_per_second,
            "session_seconds": self.session_seconds,
            "idle_timeout_seconds": self.idle_timeout_seconds,
            "require_tier1_token": self.require_tier1_token,
            "mode": self.mode,
        }


async def seed_catalog(pool: Any, event: DemoEvent) -> int:
    """Insert the event and its seats where missing; returns how many seats were added."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO booking_events (event_id, name, venue, starts_at)"
            " VALUES ($1, $2, $3, now() + interval '30 days') ON CONFLICT DO NOTHING",
            event.event_id,
            event.name,
            event.venue,
        )
        await conn.execute(
            "UPDATE booking_events SET max_seats_per_user = coalesce($2, max_seats_per_user),"
            " hold_seconds = coalesce($3, hold_seconds) WHERE event_id = $1",
            event.event_id,
            event.max_seats_per_user,
            event.hold_seconds,
        )
        before = await conn.fetchval(
            "SELECT count(*) FROM seats WHERE event_id = $1", event.event_id
        )
        await conn.executemany(
            "INSERT INTO seats (event_id, seat_id, row_label, seat_number, price_cents)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(event.event_id, *seat) for seat in event.seats()],
        )
        after = await conn.fetchval(
            "SELECT count(*) FROM seats WHERE event_id = $1", event.event_id
        )
    return int(after) - int(before)


async def configure_queue(
    settings: QueueAdminSettings,
    event_id: str,
    config: QueueConfig,
    credential: ServiceCredentialSettings,
) -> tuple[bool, str]:
    """PUT the queue settings on the queue's internal listener with this service's
    credential, retrying while the queue is unreachable or 5xx; returns (ok, what happened)."""
    url = f"{settings.base_url.rstrip('/')}/internal/v1/queue/{event_id}/config"
    headers = credential.headers()
    last = "not tried"
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, settings.attempts + 1):
            try:
                async with session.put(url, json=config.body(), headers=headers) as response:
                    text = (await response.text())[:300]
                    if response.status < 300:
                        return True, f"{response.status} from {url}"
                    last = f"{response.status} from {url}: {text}"
                    if response.status < 500:
                        return False, last  # the request itself is refused: retrying won't help
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{url} unreachable: {exc!r}"
            _LOG.info("queue_config_retry", attempt=attempt, error=last)
            if attempt < settings.attempts:
                await asyncio.sleep(settings.retry_s)
    return False, last


async def seed(
    settings: TicketSettings,
    event: DemoEvent,
    queue: QueueConfig | None,
) -> tuple[int, bool, str]:
    """Seed ``event``; configure its queue unless ``queue`` is None. Returns (seats added,
    queue ok, message)."""
    async with open_postgres(settings.postgres) as pool:
        await migrate(pool)
        added = await seed_catalog(pool, event)
    if queue is None:
        return added, True, "queue configuration skipped"
    ok, message = await configure_queue(
        settings.queue_admin, event.event_id, queue, settings.queue_credential
    )
    return added, ok, message
