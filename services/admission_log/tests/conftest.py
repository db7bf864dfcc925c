"""The admission log's read API on a migrated PostgreSQL database, shared by its test files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pytest_aiohttp import AiohttpClient

from urr_admission_log import store
from urr_admission_log.app import create_app
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.tokens import KeySet, SigningKey


@pytest.fixture
async def log(postgres_dsn: str, aiohttp_client: AiohttpClient) -> AsyncIterator[dict[str, Any]]:
    """``pool``, the tree-head signing ``key`` the app publishes, and its test ``client``."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    await store.migrate(pool)
    key = SigningKey.generate("log-1")
    client = await aiohttp_client(
        create_app(AdmissionLogSettings(), pool, KeySet([key.verification_key()]))
    )
    try:
        yield {"pool": pool, "key": key, "client": client}
    finally:
        await pool.close()
