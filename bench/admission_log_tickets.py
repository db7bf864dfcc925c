"""What the receipt-by-ticket index (issue 19, migration 004) costs the log, and what it buys.

(``records`` of bench/admission_log_store.py carry each admission's ticket, as the consumer's
``Admission.record()`` does, so both benches pay for the index.)

Two events' logs are filled to ``--leaves`` each through ``urr_admission_log.store.append`` in
batches of ``--batch``, interleaved batch by batch so the machine's load falls on both alike:
one in a database with every migration (the index on the admitted ticket), one in a database
where the index is dropped after migrating. Prints append throughput for both, then the
latency of ``store.admission_of_ticket`` (what ``/receipt?ticket=`` pays before the proof) at
that size with the index, and without it (a scan of the event's leaves).

    uv run --frozen python bench/admission_log_tickets.py [--leaves 200000] [--batch 1000]
        [--lookups 500]

Env: URR_BENCH_POSTGRES_DSN, as bench/admission_log_store.py (scratch databases only).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time

import asyncpg
from admission_log_store import quantiles, records, scratch_database

from urr_admission_log import store


async def _pool(dsn: str, *, indexed: bool) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    await store.migrate(pool)
    if not indexed:
        await pool.execute("DROP INDEX admission_log_entries_by_ticket")
    return pool


async def _lookups(pool: asyncpg.Pool, event_id: str, leaves: int, count: int) -> list[float]:
    rng = random.Random(7)
    took: list[float] = []
    async with pool.acquire() as conn:
        for _ in range(count):
            ticket = rng.randint(1, leaves)
            t0 = time.perf_counter()
            found = await store.admission_of_ticket(conn, event_id, ticket)
            took.append((time.perf_counter() - t0) * 1000)
            assert found == ticket - 1
    return took


async def main(args: argparse.Namespace) -> None:
    async with scratch_database() as with_dsn, scratch_database() as without_dsn:
        pools = {
            "indexed": await _pool(with_dsn, indexed=True),
            "no index": await _pool(without_dsn, indexed=False),
        }
        rates: dict[str, list[float]] = {label: [] for label in pools}
        try:
            for done in range(0, args.leaves, args.batch):
                count = min(args.batch, args.leaves - done)
                for label, pool in pools.items():
                    chunk = records("bench", done, count)
                    async with pool.acquire() as conn:
                        t0 = time.perf_counter()
                        await store.append(conn, "bench", chunk)
                        rates[label].append(count / (time.perf_counter() - t0))
            for label, measured in rates.items():
                total = args.leaves / sum(args.batch / rate for rate in measured)
                print(
                    f"append {label:<9} {args.leaves:>9,} leaves: {total:>8,.0f}/s overall,"
                    f" per batch median {statistics.median(measured):>8,.0f}/s"
                )
            for label, pool in pools.items():
                lookups = args.lookups if label == "indexed" else max(5, args.lookups // 50)
                p50, p95, p99 = quantiles(await _lookups(pool, "bench", args.leaves, lookups))
                print(
                    f"ticket lookup {label:<9} at {args.leaves:,} leaves ({lookups} lookups):"
                    f" P50 {p50:.2f} / P95 {p95:.2f} / P99 {p99:.2f} ms"
                )
        finally:
            for pool in pools.values():
                await pool.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=500)
    asyncio.run(main(parser.parse_args()))
