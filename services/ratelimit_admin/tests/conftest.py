"""A migrated database and a Redis client for the rate-limit admin tests (on the servers of
``urr_devstack.testing``: a fresh database and a flushed Redis per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from urr_ratelimit_admin import store


@pytest.fixture
async def rl_stores(postgres_dsn: str, redis_url: str) -> AsyncIterator[tuple[asyncpg.Pool, Redis]]:
    """(pool, redis): the pool's database has the rate-limit tables, nothing in them."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    redis = Redis.from_url(redis_url)
    try:
        await store.migrate(pool)
        yield pool, redis
    finally:
        await redis.aclose()
        await pool.close()
