"""Worker throughput: booking commands applied into PostgreSQL per second, batches of 10.

Calls the Lambda handler exactly as the SQS event source would (one event of 10 records per
invocation, one module-level loop across invocations) against a scratch database on the
local PostgreSQL server; SQS itself is left out (moto serves ~400 calls/s, far below what the
worker does, and AWS SQS is not the bottleneck either). Each record: one transaction with the
message-id row, the reservation, its seat claims and an outbox row.

    uv run python bench/worker_throughput.py [--messages 2000] [--seats-per-message 1]

Env: URR_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/postgres), the
server where a scratch database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg

from urr_common.logs import configure_logging
from urr_common.settings import load_settings
from urr_ticket_worker import handler
from urr_ticket_worker.messages import ReserveCommand
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.settings import TicketWorkerSettings
from urr_ticket_worker.testing import seed_event, sqs_record

ADMIN_DSN = os.environ.get(
    "URR_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def prepare(dsn: str, seats: int) -> list[str]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        rows = max(1, -(-seats // 100))
        letters = 26
        ids: list[str] = []
        # Seed in events of at most 26 x 100 seats (A1..Z100).
        for block in range(-(-rows // letters)):
            ids += [
                f"bench{block}:{s}"
                for s in await seed_event(
                    pool, f"bench{block}", rows=min(letters, rows), per_row=100
                )
            ]
        return ids[:seats]
    finally:
        await pool.close()


def run(messages: int, seats_per_message: int) -> None:
    name = f"urr_bench_{uuid.uuid4().hex[:12]}"
    base, _, _ = ADMIN_DSN.rpartition("/")
    dsn = f"{base}/{name}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        seats = asyncio.run(prepare(dsn, messages * seats_per_message))
        commands = []
        for i in range(messages):
            chunk = seats[i * seats_per_message : (i + 1) * seats_per_message]
            event_id = chunk[0].split(":")[0]
            commands.append(
                ReserveCommand(
                    reservation_id=uuid.uuid4(),
                    event_id=event_id,
                    user_id=f"user-{i}",
                    seat_ids=[s.split(":")[1] for s in chunk],
                )
            )
        settings = load_settings(
            TicketWorkerSettings,
            postgres={"dsn": dsn, "min_connections": 1, "max_connections": 2},
            relay={"flush_after_batch": False},
            log={"level": "WARNING"},
        )
        configure_logging(settings.log, service="bench")
        handler.configure(settings)
        batches = [commands[i : i + 10] for i in range(0, len(commands), 10)]
        # Warm up: the pool, the migrations check and the statement cache.
        handler.lambda_handler(
            {
                "Records": [
                    sqs_record(batches[0][0].to_json().decode(), group=batches[0][0].event_id)
                ]
            },
            None,
        )
        latencies = []
        started = time.perf_counter()
        for batch in batches:
            event = {"Records": [sqs_record(c.to_json().decode(), group=c.event_id) for c in batch]}
            t0 = time.perf_counter()
            response = handler.lambda_handler(event, None)
            latencies.append(time.perf_counter() - t0)
            assert not response["batchItemFailures"], response
        elapsed = time.perf_counter() - started
        handler.close()
        applied = asyncio.run(_count(dsn))
        print(f"messages: {messages} in batches of 10, {seats_per_message} seat(s) each")
        print(f"applied reservations: {applied}")
        print(f"throughput: {messages / elapsed:.0f} messages/s ({elapsed:.2f} s)")
        q = statistics.quantiles(latencies, n=100)
        p50, p95, top = q[49] * 1000, q[94] * 1000, max(latencies) * 1000
        print(f"batch latency: p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {top:.1f} ms")
    finally:
        handler.close()
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def _count(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM reservations"))
    finally:
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seats-per-message", type=int, default=1, choices=range(1, 11))
    args = parser.parse_args()
    run(args.messages, args.seats_per_message)
