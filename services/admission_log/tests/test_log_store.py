"""The admission log in real PostgreSQL: appends, idempotence, proofs, and no rewriting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from urr_admission_log import store
from urr_verify import reference
from urr_verify.merkle import leaf_hash, verify_consistency, verify_inclusion

pytestmark = pytest.mark.integration
EVENT = "concert-1"


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=8)
    assert pool is not None
    await store.migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


def _records(start: int, n: int) -> list[store.Record]:
    return [store.Record(f"rec-{i}", f'{{"seq":{i}}}'.encode()) for i in range(start, start + n)]


async def test_appends_make_proofs_the_verifier_accepts(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for start, n in ((0, 1), (1, 6), (7, 10), (17, 1), (18, 15)):
            await store.append(conn, EVENT, _records(start, n))
        data = [r.leaf for r in _records(0, 33)]
        assert await store.size_of(conn, EVENT) == 33
        for size in (1, 7, 16, 33):
            root = await store.root(conn, EVENT, size)
            assert root == reference.mth(data[:size])
            for index in range(size):
                proof = await store.inclusion_proof(conn, EVENT, index, size)
                verify_inclusion(leaf_hash(data[index]), index, size, proof, root)
        for old in range(34):
            proof = await store.consistency_proof(conn, EVENT, old, 33)
            verify_consistency(
                old,
                33,
                proof,
                await store.root(conn, EVENT, old),
                await store.root(conn, EVENT, 33),
            )
        assert await store.entries(conn, EVENT, 30, 40) == data[30:33]


async def test_a_redelivered_record_is_not_appended_twice(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        first = await store.append(conn, EVENT, _records(0, 5))
        again = await store.append(conn, EVENT, [*_records(3, 4), *_records(3, 4)])
        assert (first.count, again.first_index, again.count, again.size) == (5, 5, 2, 7)
        assert await store.entries(conn, EVENT, 0, 10) == [r.leaf for r in _records(0, 7)]


async def test_concurrent_appenders_queue_and_lose_nothing(pool: asyncpg.Pool) -> None:
    async def one(batch: int) -> None:
        async with pool.acquire() as conn:
            await store.append(conn, EVENT, _records(batch * 10, 10))

    await asyncio.gather(*(one(batch) for batch in range(8)))
    async with pool.acquire() as conn:
        leaves = await store.entries(conn, EVENT, 0, 100)
        assert sorted(leaves) == sorted(r.leaf for r in _records(0, 80))
        assert await store.root(conn, EVENT, 80) == reference.mth(leaves)


async def test_sizes_and_leaves_beyond_the_log_are_refused(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await store.append(conn, EVENT, _records(0, 4))
        for call in (
            store.root(conn, EVENT, 5),
            store.inclusion_proof(conn, EVENT, 4, 4),
            store.inclusion_proof(conn, EVENT, 0, 5),
            store.inclusion_proof(conn, EVENT, -1, 4),
            store.consistency_proof(conn, EVENT, 3, 9),
            store.consistency_proof(conn, EVENT, 4, 3),
        ):
            with pytest.raises(store.OutOfRange):
                await call


@pytest.mark.parametrize(
    "rewrite",
    [
        "UPDATE admission_log_entries SET leaf = 'x'::bytea WHERE idx = 1",
        "DELETE FROM admission_log_entries WHERE idx = 3",
        "TRUNCATE admission_log_entries",
        "UPDATE admission_log_nodes SET hash = decode(repeat('00', 32), 'hex') WHERE level = 0",
        "DELETE FROM admission_log_nodes",
        "TRUNCATE admission_log_nodes",
        "UPDATE admission_log_sizes SET size = 2",
        "DELETE FROM admission_log_sizes",
        "TRUNCATE admission_log_sizes",
    ],
)
async def test_every_rewrite_of_the_log_is_refused(pool: asyncpg.Pool, rewrite: str) -> None:
    async with pool.acquire() as conn:
        await store.append(conn, EVENT, _records(0, 4))
        before = await store.root(conn, EVENT, 4)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(rewrite)
        assert await store.root(conn, EVENT, 4) == before
        assert await store.size_of(conn, EVENT) == 4
