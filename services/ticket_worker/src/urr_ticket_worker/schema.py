"""The booking schema: its migrations are applied by every process that uses it, at start."""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING, Any, TypeAlias

from urr_common.migrations import Migration, apply_migrations, discover

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

#: A connection, whether opened directly or borrowed from a pool.
Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

COMPONENT = "booking"


def booking_migrations() -> list[Migration]:
    return discover(files("urr_ticket_worker") / "migrations")


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Apply what is missing (idempotent; replicas starting together take turns)."""
    return await apply_migrations(pool, COMPONENT, booking_migrations())
