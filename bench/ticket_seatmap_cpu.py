"""CPU per seat map of the ticket service, before and after a change, in one run (issue 22).

``.venv/bin/python bench/ticket_seatmap_cpu.py --before main [--rounds 8] [--per-round 300]
[--concurrency 8]``

In the flash crowd every admitted arrival reads ``GET /api/v1/seats/{eventId}`` once: 4,996 of
the ticket service's ~5,500 requests, on the crowd's event of 100 seats (A1-J10, the seed's
default; ``loadtests/src/urr_loadtests/setup.py``). This bench serves two ticket processes
(``python -m urr_ticket``, production settings but for the test identity key), one from
``--before`` (its ``services/ticket/src`` extracted with ``git archive`` and put first on
``PYTHONPATH``, as ``bench/ticket_burst.py`` does, whose launcher it reuses) and one from this
tree, each on a database of its own on the same PostgreSQL (``--postgres``; so each variant's
PostgreSQL backends can be told apart) and on one private ``redis-server``. Both databases
get the same 100-seat event, and before each measured burst the same state of it:

- ``open``: every seat free (the crowd's first seconds);
- ``busy``: 50 sold, 10 claimed by reservations awaiting payment (their buyers still hold
  them), 20 held, 20 free; the caller ``me`` holds 3 of the held seats and 1 of the claimed;
- ``sold out``: all 100 sold (most of the crowd's maps are read after the seats are gone).

Each round runs, per state and per variant in turn (the first alternating), ``--per-round``
seat maps, ``--concurrency`` in flight, half of them as ``me`` and half as a fresh user each,
each with its own signed gateway assertion minted before the clock starts. A warm-up burst
per state and variant comes first. Printed per state and variant: the ticket process's CPU
(user + system, ``/proc/<pid>/stat``) per seat map, median and the worst round over the
rounds; its PostgreSQL backends' and the shared Redis server's CPU per seat map (medians;
Redis runs both variants' requests but one burst at a time); latency P50/P95/P99 over all
requests; and whether both variants' answers were byte for byte the same for ``me`` and for
another user in every state (they must be).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from redis.asyncio import Redis
from ticket_burst import (
    Variant,
    clean_up,
    common_arguments,
    cpu_seconds,
    quantile,
    signed,
    start_variant,
    tree_source,
    wait_ready,
)

from urr_common.identity_testing import identity_env
from urr_devstack.procs import RedisServer, free_port
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket_worker.schema import migrate

STATES = ("open", "busy", "sold out")
ME = "me"


class Samples:
    """One state's figures for one variant: CPU per seat map per round, latencies."""

    def __init__(self) -> None:
        self.ticket_us: list[float] = []
        self.postgres_us: list[float] = []
        self.redis_us: list[float] = []
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}


def seat_ids(event: DemoEvent) -> list[str]:
    return [seat for seat, *_ in event.seats()]


async def apply_state(
    pools: list[asyncpg.Pool], redis: Redis, event_id: str, seats: list[str], state: str
) -> None:
    """The same claims in every database and the holds in Redis for ``state``."""
    sold: list[str] = []
    claimed: list[tuple[str, str]] = []  # (seat, buyer): awaiting payment, buyer holds it
    held: list[tuple[str, str]] = []
    if state == "busy":
        sold = seats[:50]
        claimed = [(seat, ME if i == 0 else f"buyer-{i}") for i, seat in enumerate(seats[50:60])]
        held = [(seat, ME if i < 3 else f"holder-{i}") for i, seat in enumerate(seats[60:80])]
    elif state == "sold out":
        sold = seats
    for pool in pools:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM seat_claims WHERE event_id = $1", event_id)
            await conn.execute("DELETE FROM reservations WHERE event_id = $1", event_id)
            rows = [(seat, f"buyer-{seat}", "confirmed") for seat in sold]
            rows += [(seat, buyer, "awaiting_payment") for seat, buyer in claimed]
            for seat, buyer, status in rows:
                rid = uuid.uuid4()
                await conn.execute(
                    "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids,"
                    " status) VALUES ($1, $2, $3, ARRAY[$4], $5)",
                    rid,
                    event_id,
                    buyer,
                    seat,
                    status,
                )
                await conn.execute(
                    "INSERT INTO seat_claims (event_id, seat_id, reservation_id)"
                    " VALUES ($1, $2, $3)",
                    event_id,
                    seat,
                    rid,
                )
    await redis.flushdb()
    for seat, holder in [*claimed, *held]:
        await redis.set(f"seat-lock:{{{event_id}}}:{seat}", f"{holder} {uuid.uuid4().hex}", ex=600)


async def backend_pids(admin: asyncpg.Connection, database: str) -> set[int]:
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", database)
    return {row["pid"] for row in rows}


def cpu_of(pids: set[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


async def burst(
    session: aiohttp.ClientSession,
    variant: Variant,
    event_id: str,
    calls: list[dict[str, str]],
    concurrency: int,
    samples: Samples | None,
    watch: tuple[asyncpg.Connection, str, int],
) -> dict[str, bytes]:
    """``calls`` seat maps (their headers), ``concurrency`` at once; returns one body per
    kind of caller (``me``, ``other``)."""
    admin, database, redis_pid = watch
    path = f"http://127.0.0.1:{variant.port}/api/v1/seats/{event_id}"
    bodies: dict[str, bytes] = {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    pending = iter(enumerate(calls))

    async def worker() -> None:
        for index, headers in pending:
            started = time.perf_counter()
            async with session.get(path, headers=headers) as response:
                body = await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
            latencies.append((time.perf_counter() - started) * 1000)
            bodies.setdefault(ME if index % 2 == 0 else "other", body)

    before_pids = await backend_pids(admin, database)
    pg0 = cpu_of(before_pids)
    ticket0, redis0 = cpu_seconds(variant.pids[0]), cpu_seconds(redis_pid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.sleep(0.02)  # replies still being flushed count too
    ticket1, redis1 = cpu_seconds(variant.pids[0]), cpu_seconds(redis_pid)
    pg1 = cpu_of(before_pids | await backend_pids(admin, database))
    if samples is not None:
        n = len(calls)
        samples.ticket_us.append((ticket1 - ticket0) / n * 1e6)
        samples.redis_us.append((redis1 - redis0) / n * 1e6)
        samples.postgres_us.append(sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items()) / n * 1e6)
        samples.latencies.extend(latencies)
        for status, count in statuses.items():
            samples.statuses[status] = samples.statuses.get(status, 0) + count
    return bodies


def callers(event_id: str, n: int) -> list[dict[str, str]]:
    """Signed headers for ``n`` seat maps: ``me`` and a fresh user alternately."""
    path = f"/api/v1/seats/{event_id}"
    return [
        signed(ME if i % 2 == 0 else f"visitor-{uuid.uuid4().hex[:10]}", "GET", path)
        for i in range(n)
    ]


async def measure(
    variants: dict[str, Variant],
    databases: dict[str, str],
    pools: list[asyncpg.Pool],
    redis: Redis,
    redis_pid: int,
    admin: asyncpg.Connection,
    event: DemoEvent,
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, Samples]], list[float], list[str]]:
    seats = seat_ids(event)
    results = {label: {state: Samples() for state in STATES} for label in variants}
    mismatches: list[str] = []
    load = [os.getloadavg()[0]]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for variant in variants.values():
            await wait_ready(session, variant.port)
        for state in STATES:  # warm-up: imports, pools, prepared statements, caches
            await apply_state(pools, redis, event.event_id, seats, state)
            for label, variant in variants.items():
                watch = (admin, databases[label], redis_pid)
                calls = callers(event.event_id, 40)
                await burst(session, variant, event.event_id, calls, args.concurrency, None, watch)
        order = list(variants)
        for number in range(args.rounds):
            for state in STATES:
                await apply_state(pools, redis, event.event_id, seats, state)
                seen: dict[str, dict[str, bytes]] = {}
                for label in order if number % 2 == 0 else list(reversed(order)):
                    calls = callers(event.event_id, args.per_round)
                    seen[label] = await burst(
                        session,
                        variants[label],
                        event.event_id,
                        calls,
                        args.concurrency,
                        results[label][state],
                        (admin, databases[label], redis_pid),
                    )
                first, second = (seen[label] for label in order)
                for who in (ME, "other"):
                    if first.get(who) != second.get(who):
                        mismatches.append(f"round {number} {state} {who}")
            load.append(os.getloadavg()[0])
    return results, load, mismatches


def report(
    results: dict[str, dict[str, Samples]], load: list[float], mismatches: list[str], args: Any
) -> None:
    print(
        f"{args.rounds} rounds x {args.per_round} seat maps per state and variant,"
        f" {args.concurrency} in flight, 100-seat event; load average"
        f" {' -> '.join(f'{value:.2f}' for value in load)}"
    )
    print(
        f"{'state':9} {'variant':16} {'ticket us/map':>13} {'(worst)':>8} {'pg us':>6}"
        f" {'redis us':>8} {'P50 ms':>7} {'P95 ms':>7} {'P99 ms':>7}  statuses"
    )
    for state in STATES:
        for label, by_state in results.items():
            s = by_state[state]
            lat = s.latencies or [0.0]
            print(
                f"{state:9} {label:16} {statistics.median(s.ticket_us):13.0f}"
                f" {max(s.ticket_us):8.0f} {statistics.median(s.postgres_us):6.0f}"
                f" {statistics.median(s.redis_us):8.0f} {quantile(lat, 0.5):7.2f}"
                f" {quantile(lat, 0.95):7.2f} {quantile(lat, 0.99):7.2f}  {s.statuses}"
            )
    print(
        "answers identical between the variants (me and another user, every state and round):"
        f" {'yes' if not mismatches else 'NO: ' + ', '.join(mismatches)}"
    )


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="urr-bench-ticket-seatmap-"))
    admin = await asyncpg.connect(args.postgres + "/postgres")
    tag = os.getpid()
    databases = {
        f"before ({args.before})": f"urr_bench_seatmap_{tag}_before",
        "this tree": f"urr_bench_seatmap_{tag}_after",
    }
    started: list[Any] = []
    pools: list[asyncpg.Pool] = []
    redis_server = RedisServer(port=free_port(), workdir=work / "redis", die_with_parent=True)
    try:
        redis_server.start()
        started.append(redis_server)
        event = DemoEvent(event_id=f"crowd-{uuid.uuid4().hex[:8]}")
        for database in databases.values():
            await admin.execute(f'CREATE DATABASE "{database}"')
            pool = await asyncpg.create_pool(f"{args.postgres}/{database}", min_size=1, max_size=2)
            pools.append(pool)
            await migrate(pool)
            await seed_catalog(pool, event)
        base_env = {
            **os.environ,
            **identity_env(),
            "URR_ENVIRONMENT": "test",
            "URR_REDIS__URL": redis_server.url,
            "URR_AWS__REGION": "us-east-1",
            "URR_AWS__ACCESS_KEY_ID": "test",
            "URR_AWS__SECRET_ACCESS_KEY": "test",
            "URR_LOG__LEVEL": "WARNING",
            "URR_RESERVATION_IDS__KEY": "seatmap-bench-reservation-id-key-0123456789",
        }
        before_src = tree_source(args.before, work / "before")
        variants = {}
        for label, database in databases.items():
            env = {**base_env, "URR_POSTGRES__DSN": f"{args.postgres}/{database}"}
            src = before_src if label.startswith("before") else None
            variants[label] = await start_variant(src, env, work, args, started)
        redis = Redis.from_url(redis_server.url)
        try:
            redis_pid = redis_server.process.pid if redis_server.process is not None else 0
            results, load, mismatches = await measure(
                variants, databases, pools, redis, redis_pid, admin, event, args
            )
        finally:
            await redis.aclose()
        report(results, load, mismatches, args)
    finally:
        for pool in pools:
            await pool.close()
        await clean_up(started, admin, list(databases.values()), work, keep=args.keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=300, help="seat maps per burst")
    parser.add_argument("--concurrency", type=int, default=8, help="seat maps in flight")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
