"""The admission log in real PostgreSQL: appends, idempotence, proofs, and no rewriting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from urr_admission_log import store
from urr_admission_log.tree import Range, nodes_of
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


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that reads a table."""
    found = [plan] if "Relation Name" in plan else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def _plan(conn: store.Connection, sql: str, *args: Any) -> dict[str, Any]:
    explained = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    document = json.loads(explained) if isinstance(explained, str) else explained
    return dict(document[0]["Plan"])


async def test_appends_and_proofs_probe_indexes_and_never_read_the_whole_log(
    pool: asyncpg.Pool,
) -> None:
    """With statistics of a long log, the two lookups are index probes, one per wanted row.

    Written as ``record_id = ANY(...)`` and ``(level, idx) IN (unnest ...)`` they were planned
    as scans of every entry or node of the event (a bitmap scan on ``event_id``, a hash join
    over a sequential scan), and a 1,000,000-leaf fill slowed down with every batch.
    """
    async with pool.acquire() as conn:
        for start in range(0, 8_000, 1_000):
            await store.append(conn, EVENT, _records(start, 1_000))
        await conn.execute("ANALYZE")
        wanted = [f"rec-{i}" for i in range(7_000, 9_000)]
        nodes = nodes_of(Range(0, 8_000)) + [(0, i) for i in range(0, 8_000, 7)]
        plans = {
            "seen": await _plan(conn, store.SEEN_RECORDS_SQL, EVENT, wanted),
            "nodes": await _plan(
                conn,
                store.STORED_NODES_SQL,
                EVENT,
                [level for level, _ in nodes],
                [index for _, index in nodes],
            ),
        }
    for name, plan in plans.items():
        scans = _scans(plan)
        assert scans, name
        for scan in scans:
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), (name, scan)
            # Both key columns in the index condition: a probe, not a range over the event.
            condition = scan["Index Cond"]
            assert "event_id" in condition, (name, condition)
            assert ("record_id" in condition) or ("level" in condition and "idx" in condition)
