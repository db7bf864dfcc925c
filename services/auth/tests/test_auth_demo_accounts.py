"""The local stack's named demo buyers (issue 21 item 5): created once, usable for a login,
left alone when they exist, and refused outside local and test (their password is public)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient

from urr_auth.cli import DEMO_ACCOUNTS, DEMO_PASSWORD, seed_demo_accounts
from urr_auth.settings import AuthSettings

Client = TestClient[web.Request, web.Application]
StartClient = Callable[[AuthSettings], Awaitable[Client]]


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM auth.users WHERE email LIKE '%@demo.urr.test'"
        )
        return found
    except asyncpg.UndefinedTableError:  # refused before it even migrated
        return 0
    finally:
        await conn.close()


async def test_demo_accounts_are_seeded_once_and_can_log_in(
    settings: AuthSettings, start_client: StartClient, postgres_dsn: str
) -> None:
    assert await asyncio.to_thread(seed_demo_accounts, settings) == 0
    assert await _count(postgres_dsn) == len(DEMO_ACCOUNTS)
    assert await asyncio.to_thread(seed_demo_accounts, settings) == 0  # idempotent
    assert await _count(postgres_dsn) == len(DEMO_ACCOUNTS)
    client = await start_client(settings)
    for email in (DEMO_ACCOUNTS[0], DEMO_ACCOUNTS[-1]):
        answer = await client.post(
            "/api/v1/auth/login", json={"email": email, "password": DEMO_PASSWORD}
        )
        assert answer.status == 200, await answer.text()


async def test_demo_accounts_are_refused_in_staging_and_prod(
    settings: AuthSettings, postgres_dsn: str
) -> None:
    for environment in ("staging", "prod"):
        # cookie_secure: the settings' own rule for those environments.
        elsewhere = settings.model_copy(update={"environment": environment, "cookie_secure": True})
        assert await asyncio.to_thread(seed_demo_accounts, elsewhere) == 2
    assert await _count(postgres_dsn) == 0
