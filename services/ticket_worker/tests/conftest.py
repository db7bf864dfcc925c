"""Fixtures of the ticket worker tests: a migrated booking database with a seeded event,
private SQS FIFO queues on the session's moto server, and the booking Kafka topics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from urr_ticket_worker import handler
from urr_ticket_worker.local.poller import Poller, resolve_queue
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.testing import (
    Queues,
    create_queues,
    create_topics,
    make_settings,
    seed_event,
    sqs_client,
)


@pytest_asyncio.fixture
async def queues(moto_endpoint: str) -> Queues:
    return await create_queues(moto_endpoint)


@pytest.fixture(scope="session")
def booking_topics(kafka_bootstrap: str) -> str:
    """The session broker with the booking topics created."""
    create_topics(kafka_bootstrap)
    return kafka_bootstrap


@pytest_asyncio.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test database with the booking schema and an event ``ev1`` seeded."""
    created = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    try:
        await migrate(created)
        await seed_event(created, "ev1")
        yield created
    finally:
        await created.close()


@pytest.fixture
def lambda_thread() -> Iterator[Callable[..., Any]]:
    """Runs calls in one dedicated thread, like a Lambda container; closes the handler's
    pool and loop at the end. Tests ``await asyncio.to_thread``-style via this runner."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lambda")

    def call(fn: Callable[..., Any], *args: Any) -> Any:
        return executor.submit(fn, *args).result(timeout=30)

    try:
        yield call
    finally:
        executor.submit(handler.close).result(timeout=30)
        executor.shutdown(wait=True)


@pytest_asyncio.fixture
async def sqs(moto_endpoint: str) -> AsyncIterator[Any]:
    """An SQS client on the session's moto server."""
    async with sqs_client(moto_endpoint) as client:
        yield client


@pytest_asyncio.fixture
async def poller(
    sqs: Any, queues: Queues, postgres_dsn: str, moto_endpoint: str, pool: asyncpg.Pool
) -> AsyncIterator[Poller]:
    """The local poller on ``queues``, its handler in one thread as in a Lambda container."""
    settings = make_settings(postgres_dsn, moto=moto_endpoint, queues=queues)
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, handler.configure, settings)
    try:
        yield Poller(sqs, await resolve_queue(sqs, queues.name), settings, executor)
    finally:
        await loop.run_in_executor(executor, handler.close)
        executor.shutdown()
