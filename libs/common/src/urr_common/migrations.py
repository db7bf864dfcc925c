"""Numbered SQL migrations, applied at start-up, each once, in order, under a lock.

A service keeps ``NNN_description.sql`` files in a package folder and calls
``apply_migrations(pool, "auth", files)``. Each file runs in its own transaction together
with the row recording it, so a failed file leaves nothing behind and is retried next start.
A PostgreSQL advisory lock makes replicas starting together take turns.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

_FILE_RE = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")
#: Arbitrary but fixed: every URR service contends for the same lock key.
_ADVISORY_LOCK_KEY = 0x55_52_52_4D  # "URRM"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component  text        NOT NULL,
    version    integer     NOT NULL,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
)
"""


class MigrationError(RuntimeError):
    """Migration files are inconsistent with what the database has already applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(folder: Traversable) -> list[Migration]:
    """The migrations in ``folder`` sorted by number; duplicate numbers are an error."""
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE_RE.fullmatch(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations are numbered {version}")
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


async def apply_migrations(
    pool: asyncpg.Pool, component: str, migrations: Iterable[Migration]
) -> list[str]:
    """Apply what is missing; returns the names applied now (empty when up to date)."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        try:
            await conn.execute(_CREATE_TABLE)
            rows = await conn.fetch(
                "SELECT version, checksum FROM schema_migrations WHERE component = $1", component
            )
            done = {row["version"]: row["checksum"] for row in rows}
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"{component} migration {migration.name} changed after it was applied"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (component, version, name, checksum)"
                        " VALUES ($1, $2, $3, $4)",
                        component,
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                applied_now.append(migration.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now
