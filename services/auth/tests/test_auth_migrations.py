"""Migrations: applied at start, idempotent, safe when replicas start together."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from urr_auth.app import create_app
from urr_auth.settings import AuthSettings
from urr_auth.testing import AuthApi
from urr_auth.users import migrate

Client = TestClient[web.Request, web.Application]
StartClient = Callable[[AuthSettings], Awaitable[Client]]


async def test_starting_twice_applies_the_schema_once_and_keeps_the_data(
    settings: AuthSettings, start_client: StartClient, postgres_dsn: str
) -> None:
    first = await start_client(settings)
    await AuthApi(first).register()
    await first.close()

    second = await start_client(settings)
    await AuthApi(second).login()

    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = await conn.fetch(
            "SELECT version, name FROM schema_migrations WHERE component = 'auth'"
        )
        assert [tuple(row) for row in rows] == [(1, "001_users.sql")]
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
        try:
            assert await migrate(pool) == []
        finally:
            await pool.close()
    finally:
        await conn.close()


async def test_replicas_starting_together_agree_on_one_schema(
    settings: AuthSettings, postgres_dsn: str
) -> None:
    runners = [web.AppRunner(create_app(settings)) for _ in range(3)]
    try:
        await asyncio.gather(*(runner.setup() for runner in runners))
    finally:
        await asyncio.gather(*(runner.cleanup() for runner in runners))

    conn = await asyncpg.connect(postgres_dsn)
    try:
        count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert count == 1


BAD_ROWS = [
    # a role outside user/admin
    "INSERT INTO auth.users (email, password_hash, role)"
    " VALUES ('a@example.com', '$argon2id$x', 'superuser')",
    # an address not in its lower-case form
    "INSERT INTO auth.users (email, password_hash) VALUES ('A@example.com', '$argon2id$x')",
    # a password that is not an argon2 hash
    "INSERT INTO auth.users (email, password_hash) VALUES ('b@example.com', 'plain')",
]


async def test_the_schema_itself_refuses_bad_rows(postgres_dsn: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    try:
        await migrate(pool)
        async with pool.acquire() as conn:
            for statement in BAD_ROWS:
                with pytest.raises(asyncpg.CheckViolationError):
                    await conn.execute(statement)
            await conn.execute(
                "INSERT INTO auth.users (email, password_hash) VALUES ('c@example.com', '$argon2')"
            )
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(
                    "INSERT INTO auth.users (email, password_hash)"
                    " VALUES ('c@example.com', '$argon2')"
                )
    finally:
        await pool.close()
