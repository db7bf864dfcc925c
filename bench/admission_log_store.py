"""The admission log in PostgreSQL: append throughput and proof latency at 1,000,000 leaves.

One event's log is filled to ``--leaves`` (1,000,000) through ``urr_admission_log.store.append``
in batches of ``--batch`` (1,000: what the consumer's ``getmany(max_records=1000)`` hands it),
as the consumer appends a fetched batch: one transaction per batch. Side by side in the same
run and database:

- ``per-row``: the same append with one record per call (one transaction and commit per
  admission), for ``--per-row`` admissions: the baseline the batching is measured against;
- proofs at ``--small`` (1,000) leaves: another event's log, the baseline the 1M-leaf proof
  latency is measured against.

Prints admissions/s per batch (median and the slow tails: the p5/p1 batch throughput), batch
latency, and inclusion / consistency proof latency (median, p95, p99) as the API's handlers
pay it (one pooled connection, the size check plus one query of O(log n) nodes), then the same
through the log API over loopback HTTP (``GET .../proof/inclusion`` and ``.../receipt``, after
signing a head per event). Every 50th proof is checked with urr-verify against the root, so
the figures are for correct proofs.

    uv run --frozen python bench/admission_log_store.py [--leaves 1000000] [--batch 1000]
        [--proofs 2000] [--per-row 2000] [--small 1000]

Env: URR_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/postgres), the
server where a scratch database is created and dropped (nothing else is touched).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
from aiohttp import web

from urr_admission_log import heads, store
from urr_admission_log.app import create_app
from urr_admission_log.leaves import Admission, holder_hash
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.tokens import KeySet, SigningKey
from urr_devstack.procs import free_port
from urr_verify.merkle import leaf_hash, verify_consistency, verify_inclusion

ADMIN_DSN = os.environ.get(
    "URR_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SECRET = b"bench-holder-secret-0123456789"
AT_MS = 1_780_000_000_000


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    name = f"urr_bench_log_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = ADMIN_DSN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def records(event_id: str, start: int, count: int) -> list[store.Record]:
    """Admission leaves exactly as the consumer encodes them (same size, same fields)."""
    made = []
    for ticket in range(start + 1, start + count + 1):
        leaf = {
            "kind": "admit",
            "event": event_id,
            "ticket": ticket,
            "at": AT_MS + ticket,
            "who": holder_hash(SECRET, event_id, f"user-{ticket}"),
        }
        made.append(store.Record(uuid.uuid4().hex, Admission("", event_id, leaf).encoded(), ticket))
    return made


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered), pick(0.95), pick(0.99)


def low_tail(values: list[float], q: float) -> float:
    """The throughput the slowest ``q`` of batches stayed under (p5 = 5 % were slower)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fill(
    pool: asyncpg.Pool, event_id: str, total: int, batch: int, progress: bool
) -> list[tuple[int, float]]:
    """Append ``total`` leaves in ``batch``-sized transactions; (count, seconds) per call."""
    timings: list[tuple[int, float]] = []
    started = time.monotonic()
    async with pool.acquire() as conn:
        done = 0
        while done < total:
            chunk = records(event_id, done, min(batch, total - done))
            t0 = time.perf_counter()
            appended = await store.append(conn, event_id, chunk)
            timings.append((appended.count, time.perf_counter() - t0))
            done += appended.count
            if progress and done % 100_000 == 0:
                print(f"  {done:>9,} leaves after {time.monotonic() - started:6.1f} s", flush=True)
    return timings


def report_appends(label: str, timings: list[tuple[int, float]]) -> None:
    rates = [count / seconds for count, seconds in timings]
    latencies = [seconds * 1000 for _, seconds in timings]
    total = sum(count for count, _ in timings)
    wall = sum(seconds for _, seconds in timings)
    p50, p95, p99 = quantiles(latencies)
    print(
        f"{label:<30} {total:>9,} leaves {total / wall:>9,.0f}/s overall;"
        f" per call {statistics.median(rates):>9,.0f}/s median,"
        f" p5 {low_tail(rates, 0.05):>9,.0f}/s, p1 {low_tail(rates, 0.01):>9,.0f}/s;"
        f" call latency P50 {p50:.1f} / P95 {p95:.1f} / P99 {p99:.1f} ms"
    )


async def proof_latency(
    pool: asyncpg.Pool, event_id: str, size: int, rounds: int
) -> dict[str, list[float]]:
    rng = random.Random(size)
    samples: dict[str, list[float]] = {"inclusion": [], "consistency": [], "root": []}
    async with pool.acquire() as conn:
        root = await store.root(conn, event_id, size)
        for round_ in range(rounds):
            index = rng.randrange(size)
            t0 = time.perf_counter()
            proof = await store.inclusion_proof(conn, event_id, index, size)
            samples["inclusion"].append((time.perf_counter() - t0) * 1000)
            old = rng.randrange(1, size + 1)
            t0 = time.perf_counter()
            consistency = await store.consistency_proof(conn, event_id, old, size)
            samples["consistency"].append((time.perf_counter() - t0) * 1000)
            if round_ % 50 == 0:
                (leaf,) = await store.entries(conn, event_id, index, index + 1)
                verify_inclusion(leaf_hash(leaf), index, size, proof, root)
                old_root = await store.root(conn, event_id, old)
                verify_consistency(old, size, consistency, old_root, root)
            if round_ % 10 == 0:
                t0 = time.perf_counter()
                await store.root(conn, event_id, size)
                samples["root"].append((time.perf_counter() - t0) * 1000)
    return samples


async def http_latency(
    pool: asyncpg.Pool, sizes: dict[str, int], rounds: int
) -> dict[tuple[str, int], list[float]]:
    """The same proofs through the log API (aiohttp on a loopback port, one client session):
    what a verifier waits for before any CDN, ETag and JSON included."""
    key = SigningKey.generate("bench-1")
    async with pool.acquire() as conn:
        await heads.sign_grown(conn, key, "urr-admission-log")
    app = create_app(AdmissionLogSettings(), pool, KeySet([key.verification_key()]))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    samples: dict[tuple[str, int], list[float]] = {}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            for event_id, size in sizes.items():
                rng = random.Random(size)
                for what in ("inclusion", "receipt"):
                    times = samples.setdefault((what, size), [])
                    for _ in range(rounds):
                        leaf = rng.randrange(size)
                        url = (
                            f"/v1/log/{event_id}/proof/inclusion?leaf={leaf}&size={size}"
                            if what == "inclusion"
                            else f"/v1/log/{event_id}/receipt?leaf={leaf}"
                        )
                        t0 = time.perf_counter()
                        async with session.get(url) as answer:
                            await answer.read()
                            assert answer.status == 200, url
                        times.append((time.perf_counter() - t0) * 1000)
    finally:
        await runner.cleanup()
    return samples


async def table_bytes(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT relname, pg_total_relation_size(oid) AS bytes FROM pg_class"
        " WHERE relname IN ('admission_log_entries', 'admission_log_nodes')"
    )
    return {str(row["relname"]): int(row["bytes"]) for row in rows}


async def main(args: argparse.Namespace) -> None:
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    async with scratch_database() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        assert pool is not None
        try:
            await store.migrate(pool)
            per_row = await fill(pool, "per-row", args.per_row, 1, progress=False)
            await fill(pool, "small", args.small, args.batch, progress=False)
            print(f"filling one event to {args.leaves:,} leaves in batches of {args.batch:,}")
            started = time.monotonic()
            bulk = await fill(pool, "bench", args.leaves, args.batch, progress=True)
            fill_s = time.monotonic() - started
            print(f"filled in {fill_s:.0f} s; load average now {os.getloadavg()[0]:.2f}")
            await pool.execute("ANALYZE")
            print()
            report_appends("per-row append (baseline)", per_row)
            report_appends(f"batched append, {args.batch:,}/call", bulk)
            tenth = max(1, len(bulk) // 10)
            first, last = bulk[:tenth], bulk[-tenth:]
            report_appends("  first 10% of the fill", first)
            report_appends("  last 10% of the fill", last)
            sizes = await table_bytes(pool)
            total_bytes = sum(sizes.values())
            print(
                f"storage: entries {sizes.get('admission_log_entries', 0) / 2**20:.0f} MiB,"
                f" nodes {sizes.get('admission_log_nodes', 0) / 2**20:.0f} MiB,"
                f" {total_bytes / (args.leaves + args.small + args.per_row):.0f} B per leaf"
            )
            print()
            print(f"{'leaves':>10} {'what':<20} {'P50 ms':>8} {'P95 ms':>8} {'P99 ms':>8}")
            for event_id, size in (("small", args.small), ("bench", args.leaves)):
                samples = await proof_latency(pool, event_id, size, args.proofs)
                for what, values in samples.items():
                    p50, p95, p99 = quantiles(values)
                    print(f"{size:>10,} {what:<20} {p50:>8.2f} {p95:>8.2f} {p99:>8.2f}")
            # Consistency proofs at the API need two signed sizes; inclusion and receipts
            # (which carry the latest head) show the HTTP path's cost.
            sizes = {"small": args.small, "bench": args.leaves}
            for (what, size), values in (await http_latency(pool, sizes, args.proofs)).items():
                p50, p95, p99 = quantiles(values)
                print(f"{size:>10,} {'GET ' + what:<20} {p50:>8.2f} {p95:>8.2f} {p99:>8.2f}")
        finally:
            await pool.close()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--proofs", type=int, default=2_000)
    parser.add_argument("--per-row", type=int, default=2_000)
    parser.add_argument("--small", type=int, default=1_000)
    asyncio.run(main(parser.parse_args()))
