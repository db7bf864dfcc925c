"""Fixtures of the ticket API tests: the app on real Redis, PostgreSQL and moto SQS, with the
``demo`` event (A1-J10) seeded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from urr_common.identity_testing import act_as, as_gateway, identity_settings
from urr_common.settings import load_settings
from urr_ticket.app import AUDIENCE, create_app
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket.settings import TicketSettings
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.testing import Queues, create_queues, create_topics


@pytest_asyncio.fixture
async def queues(moto_endpoint: str) -> Queues:
    return await create_queues(moto_endpoint)


@pytest.fixture(scope="session")
def booking_topics(kafka_bootstrap: str) -> str:
    create_topics(kafka_bootstrap)
    return kafka_bootstrap


def ticket_settings(
    postgres_dsn: str, redis_url: str, moto_endpoint: str, queues: Queues, **overrides: Any
) -> TicketSettings:
    values: dict[str, Any] = {
        "environment": "test",
        "redis": {"url": redis_url},
        "postgres": {"dsn": postgres_dsn, "min_connections": 1, "max_connections": 10},
        "aws": {
            "endpoint_url": moto_endpoint,
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": "test",
        },
        "sqs": {"queue_name": queues.name, "dlq_name": queues.dlq_name, "wait_time_s": 1},
    }
    values.update(overrides)
    values.setdefault("identity", identity_settings())
    return load_settings(TicketSettings, **values)


@pytest_asyncio.fixture
async def db(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """The test database, migrated, with ``demo`` seeded."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    try:
        await migrate(pool)
        await seed_catalog(pool, DemoEvent())
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def settings(
    postgres_dsn: str, redis_url: str, moto_endpoint: str, queues: Queues, db: asyncpg.Pool
) -> TicketSettings:
    return ticket_settings(postgres_dsn, redis_url, moto_endpoint, queues)


@pytest_asyncio.fixture
async def client(aiohttp_client: Any, settings: TicketSettings) -> Any:
    return await aiohttp_client(
        create_app(settings, registry=CollectorRegistry()), middlewares=(as_gateway(AUDIENCE),)
    )


def as_user(user_id: str, **extra: str) -> dict[str, str]:
    """Ask the test client's gateway stand-in to assert this user (``identity_testing``)."""
    return act_as(user_id, "user", **extra)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Debian's Chromium under Playwright, for the page tests."""
    from playwright.async_api import async_playwright

    from urr_devstack.testing import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()
