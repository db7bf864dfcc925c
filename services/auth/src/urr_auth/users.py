"""Users in PostgreSQL (``auth.users``): the only module that writes SQL.

Every statement is a single atomic one: uniqueness comes from the ``lower(email)`` index
(``ON CONFLICT``), never from a read followed by a write, so concurrent requests cannot leave
a duplicate or a half-made account.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from importlib.resources import files
from typing import Any

import asyncpg

from urr_common.migrations import apply_migrations, discover

#: The name this service's migrations are recorded under in ``schema_migrations``.
MIGRATIONS_COMPONENT = "auth"


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class User:
    """An account as the service shows it (never with its password hash)."""

    id: uuid.UUID
    email: str
    role: Role
    display_name: str | None
    created_at: datetime
    updated_at: datetime

    def to_public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "role": self.role.value,
            "display_name": self.display_name,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Credentials:
    """A user with the stored hash, for the login path only."""

    user: User
    password_hash: str


class UserStoreUnavailable(RuntimeError):
    """PostgreSQL cannot be reached or is refusing connections; the request may be retried."""


class EmailTaken(Exception):
    """Another account already uses this address (whatever its case)."""


# Statements are whole literals (no string building): nothing a client sends reaches SQL
# except as a bound parameter.
_INSERT_USER = """
INSERT INTO auth.users (email, password_hash, display_name, role) VALUES ($1, $2, $3, $4)
ON CONFLICT ((lower(email))) DO NOTHING
RETURNING id, email, role, display_name, created_at, updated_at
"""
_SELECT_BY_EMAIL = """
SELECT id, email, role, display_name, created_at, updated_at, password_hash
FROM auth.users WHERE lower(email) = lower($1)
"""
_SELECT_BY_ID = """
SELECT id, email, role, display_name, created_at, updated_at FROM auth.users WHERE id = $1
"""
_UPDATE_HASH = """
UPDATE auth.users SET password_hash = $3, updated_at = now()
WHERE id = $1 AND password_hash = $2
"""
# xmax is 0 only on a row this statement inserted, which tells "created" from "updated".
_UPSERT_ADMIN = """
INSERT INTO auth.users (email, password_hash, role) VALUES ($1, $2, 'admin')
ON CONFLICT ((lower(email))) DO UPDATE
SET password_hash = EXCLUDED.password_hash, role = 'admin', updated_at = now()
RETURNING id, email, role, display_name, created_at, updated_at, (xmax = 0) AS created
"""

#: Connection-level failures: the database is away, not the request wrong.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


async def migrate(pool: asyncpg.Pool) -> list[str]:
    """Bring ``auth.users`` up to date (idempotent; safe for replicas starting together)."""
    migrations = discover(files("urr_auth") / "migrations")
    return await apply_migrations(pool, MIGRATIONS_COMPONENT, migrations)


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        role=Role(row["role"]),
        display_name=row["display_name"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class UserStore:
    """Reads and writes ``auth.users`` through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy[Any]]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise UserStoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def create(
        self, email: str, password_hash: str, display_name: str | None, role: Role = Role.USER
    ) -> User:
        """Insert a new account; ``EmailTaken`` when the address is in use."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                _INSERT_USER,
                email,
                password_hash,
                display_name,
                role.value,
            )
        if row is None:
            raise EmailTaken(email)
        return _user(row)

    async def credentials_by_email(self, email: str) -> Credentials | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                _SELECT_BY_EMAIL,
                email,
            )
        return None if row is None else Credentials(_user(row), row["password_hash"])

    async def by_id(self, user_id: uuid.UUID) -> User | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(_SELECT_BY_ID, user_id)
        return None if row is None else _user(row)

    async def replace_password_hash(self, user_id: uuid.UUID, old_hash: str, new_hash: str) -> bool:
        """Store a rehash unless the password changed meanwhile (compare-and-set)."""
        async with self._connection() as conn:
            status = await conn.execute(
                _UPDATE_HASH,
                user_id,
                old_hash,
                new_hash,
            )
        return bool(status == "UPDATE 1")

    async def upsert_admin(self, email: str, password_hash: str) -> tuple[User, bool]:
        """Create the admin or make the existing account admin with this password.

        Returns the user and whether it was created.
        """
        async with self._connection() as conn:
            row = await conn.fetchrow(
                _UPSERT_ADMIN,
                email,
                password_hash,
            )
        if row is None:  # pragma: no cover - an upsert always returns its row
            raise RuntimeError("upsert returned no row")
        return _user(row), bool(row["created"])

    async def ping(self) -> None:
        """Raise unless a connection can run a query (the readiness check)."""
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")
