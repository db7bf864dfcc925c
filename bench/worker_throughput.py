"""Worker throughput for ONE event: booking commands applied into PostgreSQL per second.

Side by side in one run, on the same scratch database and the same commands (batches of 10,
one seat each, all in one event, each reservation claiming its seat and writing its outbox row):

- ``before``: the worker before issue 20, exactly: ``booking.py`` as of ``--baseline-rev``
  (read with ``git show``), one transaction (one commit, one WAL flush) and nine statements
  per message, batches one after another: with ``MessageGroupId = eventId`` SQS handed an
  event's batches to one worker at a time.
- ``per-message``: today's statements (two per reservation), still one transaction per
  message: what the fewer round trips alone give.
- ``batched``: ``urr_ticket_worker.batch.apply_batch``, one transaction per batch with a
  savepoint per message, batches one after another (one worker).
- ``batched xN``: the same with N workers at once (each N of ``--concurrency``, e.g. ``4,8``),
  each with its own connection: with
  ``MessageGroupId = <eventId>:<userId>`` SQS hands one event's buyers to up to the event source
  mapping's maximum concurrency of Lambdas.

SQS itself is left out (moto serves ~400 calls/s, far below what the worker does, and AWS SQS
is not the bottleneck either); ``tests/test_worker_batch.py`` covers the queue. Each repeat
starts from empty booking tables. Prints msgs/s (median, worst and best over repeats) and batch
latency percentiles over all repeats.

    uv run --frozen python bench/worker_throughput.py [--messages 2000] [--repeats 5]
        [--concurrency 4,8] [--baseline-rev a36af50]

Env: URR_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/postgres), the
server where a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import asyncpg

from urr_common.logs import configure_logging
from urr_common.settings import LogSettings
from urr_ticket_worker.batch import BatchItem, apply_batch
from urr_ticket_worker.booking import apply_command
from urr_ticket_worker.messages import ReserveCommand, command_group_id, parse_command
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.settings import BookingSettings
from urr_ticket_worker.testing import seed_event

ADMIN_DSN = os.environ.get(
    "URR_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
EVENT = "bench"
BATCH = 10
#: What each benchmarked path does with one batch on one pool.
Path = Callable[[asyncpg.Pool, Sequence[BatchItem]], Awaitable[None]]
SETTINGS = BookingSettings()


#: The last commit before issue 20 changed the worker's statements and transactions.
BASELINE_REV = "a36af50"
BOOKING_PATH = "services/ticket_worker/src/urr_ticket_worker/booking.py"


def legacy_path(rev: str) -> Path:
    """The per-message path of ``booking.py`` at ``rev``, loaded as a module of its own."""
    source = subprocess.run(  # noqa: S603 - git from PATH, fixed argv, no shell
        ["git", "show", f"{rev}:{BOOKING_PATH}"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("urr_bench_legacy_booking")
    sys.modules[module.__name__] = module  # its dataclasses look their module up there
    exec(compile(source, f"{rev}:{BOOKING_PATH}", "exec"), module.__dict__)  # noqa: S102
    legacy_apply = module.apply_command

    async def before(pool: asyncpg.Pool, items: Sequence[BatchItem]) -> None:
        for item in items:
            await legacy_apply(pool, item.message_id, parse_command(item.body), SETTINGS)

    return before


async def per_message(pool: asyncpg.Pool, items: Sequence[BatchItem]) -> None:
    """One transaction per message, in order, with today's statements."""
    for item in items:
        await apply_command(pool, item.message_id, parse_command(item.body), SETTINGS)


async def batched(pool: asyncpg.Pool, items: Sequence[BatchItem]) -> None:
    outcome = await apply_batch(pool, items, SETTINGS)
    if outcome.failed:
        raise RuntimeError(f"{len(outcome.failed)} messages failed")


@dataclass
class Figures:
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def make_batches(messages: int, seats: list[str]) -> list[list[BatchItem]]:
    items = []
    for i in range(messages):
        command = ReserveCommand(
            reservation_id=uuid.uuid4(), event_id=EVENT, user_id=f"user-{i}", seat_ids=[seats[i]]
        )
        items.append(
            BatchItem(str(uuid.uuid4()), command_group_id(command), command.to_json().decode())
        )
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


async def run_once(
    pool: asyncpg.Pool, path: Path, batches: list[list[BatchItem]], workers: int, into: Figures
) -> None:
    await pool.execute("TRUNCATE reservations, seat_claims, processed_messages, outbox CASCADE")
    queue: asyncio.Queue[list[BatchItem]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)

    async def worker() -> None:
        while not queue.empty():
            batch = queue.get_nowait()
            t0 = time.perf_counter()
            await path(pool, batch)
            into.latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    applied = await pool.fetchval("SELECT count(*) FROM seat_claims")
    expected = sum(len(b) for b in batches)
    if applied != expected:
        raise RuntimeError(f"{applied} seats claimed, {expected} expected")
    into.rates.append(expected / elapsed)


async def bench(
    dsn: str, messages: int, repeats: int, concurrency: list[int], before: Path
) -> None:
    load_before = os.getloadavg()[0]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max(concurrency))
    try:
        await migrate(pool)
        per_row = 100
        seats = await seed_event(pool, EVENT, rows=-(-messages // per_row), per_row=per_row)
        batches = make_batches(messages, seats)
        paths: list[tuple[str, Path, int]] = [
            ("before", before, 1),
            ("per-message", per_message, 1),
            ("batched", batched, 1),
            *((f"batched x{n}", batched, n) for n in concurrency),
        ]
        figures = {name: Figures() for name, _, _ in paths}
        await run_once(pool, batched, batches[:5], 1, Figures())  # warm up
        # Interleaved, so drifting machine load hits every path alike.
        for _ in range(repeats):
            for name, path, workers in paths:
                await run_once(pool, path, batches, workers, figures[name])
    finally:
        await pool.close()
    print(
        f"{messages} messages for one event in batches of {BATCH}, 1 seat each,"
        f" {repeats} repeats; load average before {load_before:.2f}, after"
        f" {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'path':<14} {'msgs/s p50':>11} {'worst':>8} {'best':>8}"
        f" {'batch ms p50':>13} {'p95':>7} {'p99':>7}"
    )
    base = statistics.median(figures["before"].rates)
    for name, fig in figures.items():
        q = statistics.quantiles(fig.latencies, n=100)
        rate = statistics.median(fig.rates)
        print(
            f"{name:<14} {rate:>11.0f} {min(fig.rates):>8.0f} {max(fig.rates):>8.0f}"
            f" {q[49] * 1000:>13.1f} {q[94] * 1000:>7.1f} {q[98] * 1000:>7.1f}"
            f"   x{rate / base:.2f}"
        )


def run(messages: int, repeats: int, concurrency: list[int], baseline_rev: str) -> None:
    configure_logging(LogSettings(level="WARNING"), service="bench")
    before = legacy_path(baseline_rev)
    name = f"urr_bench_{uuid.uuid4().hex[:12]}"
    base, _, _ = ADMIN_DSN.rpartition("/")
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        asyncio.run(bench(f"{base}/{name}", messages, repeats, concurrency, before))
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000, choices=range(10, 2601))
    parser.add_argument("--repeats", type=int, default=5, choices=range(1, 51))
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[4, 8],
        help="comma-separated worker counts for the batched path, each 2-10 (default 4,8)",
    )
    parser.add_argument("--baseline-rev", default=BASELINE_REV)
    args = parser.parse_args()
    if not all(2 <= n <= 10 for n in args.concurrency):
        parser.error("--concurrency: worker counts from 2 to 10")
    run(args.messages, args.repeats, args.concurrency, args.baseline_rev)
