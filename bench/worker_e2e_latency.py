"""End-to-end reservation latency: from ``POST /api/v1/reservations`` to status ``confirmed``.

Runs the whole booking path on this machine with private servers (redis-server, moto, Tansu
started here; a scratch database on the local PostgreSQL): the ticket API, the local SQS
poller feeding the worker Lambda handler, the outbox relay, the payment stand-in and the
outcome consumer, all in this process (the handler in its own thread, as in a Lambda). Each
sample: hold one seat, reserve it, poll the status every 5 ms until it is ``confirmed``.

Two phases in one run: first ``--samples`` reservations one at a time (the baseline), then
under load: ``--concurrency`` buyers at once, each making ``--per-buyer`` reservations in a
row (one user per reservation, so each is its own FIFO group ``<eventId>:<userId>``), each
polling its status every ``--load-poll-ms`` (100: at 5 ms, 20 buyers' polls alone are 4,000
requests a second to the API that shares this process's event loop with the consumers). One
poller feeds one handler, as one Lambda instance would (in AWS up to 10 run at once).

    uv run python bench/worker_e2e_latency.py [--samples 40] [--payment-delay-ms 0]
        [--concurrency 20] [--per-buyer 8] [--load-poll-ms 100]   # --concurrency 0: baseline only
        [--no-flush]   # leave publishing to the relay alone (no post-batch flush in the Lambda)

Env: URR_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_common.identity import ASSERTION_HEADER
from urr_common.identity_testing import identity_settings, mint
from urr_common.logs import configure_logging
from urr_common.settings import LogSettings, load_settings
from urr_devstack.procs import RedisServer, free_port, moto_server, tansu_server
from urr_ticket.app import create_app
from urr_ticket.outcomes import outcome_loop
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket.settings import TicketSettings
from urr_ticket_worker import handler
from urr_ticket_worker.local.poller import Poller, resolve_queue
from urr_ticket_worker.payment import payment_loop
from urr_ticket_worker.process import Heartbeat
from urr_ticket_worker.relay import relay_loop
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.settings import TicketWorkerSettings
from urr_ticket_worker.testing import create_queues, create_topics, sqs_client

#: Seat rows of the bench event (A-Z, ten seats each): one seat per reservation.
ROWS = 26
SEATS = ROWS * 10
ADMIN_DSN = os.environ.get(
    "URR_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    name = f"urr_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{ADMIN_DSN.rpartition('/')[0]}/{name}"
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


Phases = dict[str, list[float]]


async def measure(args: argparse.Namespace, workdir: Path) -> tuple[Phases, float]:
    redis = RedisServer(port=free_port(), workdir=workdir / "redis")
    moto = moto_server(free_port(), workdir / "moto.log")
    kafka = tansu_server(free_port(), workdir / "tansu.log")
    for server in (redis, moto, kafka):
        server.start()
    try:
        moto_url = f"http://127.0.0.1:{moto.port}"
        bootstrap = f"127.0.0.1:{kafka.port}"
        await asyncio.to_thread(create_topics, bootstrap)
        queues = await create_queues(moto_url, visibility_timeout_s=30)
        async with scratch_database() as dsn:
            return await _run(args, dsn, redis.url, moto_url, bootstrap, queues)
    finally:
        for server in (kafka, moto, redis):
            server.stop()


async def _run(
    args: argparse.Namespace, dsn: str, redis_url: str, moto_url: str, bootstrap: str, queues: Any
) -> tuple[Phases, float]:
    aws = {"endpoint_url": moto_url, "access_key_id": "bench", "secret_access_key": "bench"}
    common = {
        "postgres": {"dsn": dsn},
        "kafka": {"bootstrap_servers": bootstrap},
        "aws": aws,
        "sqs": {"queue_name": queues.name, "dlq_name": queues.dlq_name},
        "log": {"level": "WARNING"},
    }
    worker = load_settings(
        TicketWorkerSettings,
        **common,
        relay={"flush_after_batch": not args.no_flush},
        payment={"decline_rate": 0.0, "delay_ms": args.payment_delay_ms},
    )
    ticket = load_settings(
        TicketSettings, **common, redis={"url": redis_url}, identity=identity_settings()
    )
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    await migrate(pool)
    await seed_catalog(pool, DemoEvent(rows=ROWS, seats_per_row=10))
    await pool.close()

    runner = web.AppRunner(create_app(ticket, registry=CollectorRegistry()))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    executor = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, handler.configure, worker)

    async def poll() -> None:
        async with sqs_client(moto_url) as sqs:
            poller = Poller(sqs, await resolve_queue(sqs, queues.name), worker, executor)
            while not stop.is_set():
                await poller.poll_once()

    tasks = [
        asyncio.create_task(poll()),
        asyncio.create_task(relay_loop(worker, CollectorRegistry())(stop, Heartbeat())),
        asyncio.create_task(payment_loop(worker, CollectorRegistry())(stop, Heartbeat())),
        asyncio.create_task(outcome_loop(ticket, CollectorRegistry())(stop, Heartbeat())),
    ]
    seats = [s[0] for s in DemoEvent(rows=ROWS, seats_per_row=10).seats()]
    latencies: list[float] = []
    loaded: list[float] = []
    load_wall = 0.0
    try:
        connector = aiohttp.TCPConnector(limit=max(100, args.concurrency * 2))
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:
            # The first reservation waits for the consumers to join their groups: not counted.
            await _one(http, "warmup", seats.pop(), timeout_s=60)
            for i in range(args.samples):
                latencies.append(await _one(http, f"fan-{i}", seats.pop(), timeout_s=30))

            async def buyer(index: int) -> None:
                for j in range(args.per_buyer):
                    seat = seats.pop()
                    loaded.append(
                        await _one(
                            http,
                            f"load-{index}-{j}",
                            seat,
                            timeout_s=120,
                            poll_s=args.load_poll_ms / 1000,
                        )
                    )

            if args.concurrency > 0:
                started = time.perf_counter()
                await asyncio.gather(*(buyer(i) for i in range(args.concurrency)))
                load_wall = time.perf_counter() - started
        for phase, prefix in (("one at a time", "fan-"), ("under load", "load-")):
            for name, values in (await _stages(dsn, prefix)).items():
                print(f"  {phase}, stage {name}: median {statistics.median(values) * 1000:.0f} ms")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await loop.run_in_executor(executor, handler.close)
        executor.shutdown()
        await runner.cleanup()
    phases = {"one at a time (baseline)": latencies}
    if loaded:
        phases[f"{args.concurrency} buyers at once"] = loaded
    return phases, load_wall


async def _stages(dsn: str, user_prefix: str) -> dict[str, list[float]]:
    """Where the time goes for the users named ``user_prefix...``, from the database's own
    timestamps (one clock)."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT r.created_at AS requested,"
            " (SELECT min(processed_at) FROM processed_messages p WHERE p.consumer LIKE 'sqs:%'"
            "   AND p.processed_at >= r.created_at AND EXISTS (SELECT 1 FROM outbox o"
            "   WHERE o.payload->>'reservationId' = r.reservation_id::text"
            "   AND o.topic = 'payment-events' AND o.created_at = p.processed_at)) AS applied,"
            " (SELECT sent_at FROM outbox o WHERE o.topic = 'payment-events'"
            "   AND o.payload->>'reservationId' = r.reservation_id::text) AS published,"
            " r.updated_at AS confirmed"
            " FROM reservations r WHERE r.status = 'confirmed' AND r.user_id LIKE $1",
            f"{user_prefix}%",
        )
    finally:
        await connection.close()
    stages: dict[str, list[float]] = {
        "request -> worker transaction": [],
        "worker -> payment-events published": [],
        "published -> confirmed (payment + outcome consumer)": [],
    }
    for row in rows:
        if row["applied"] is None or row["published"] is None:
            continue
        stages["request -> worker transaction"].append(
            (row["applied"] - row["requested"]).total_seconds()
        )
        stages["worker -> payment-events published"].append(
            (row["published"] - row["applied"]).total_seconds()
        )
        stages["published -> confirmed (payment + outcome consumer)"].append(
            (row["confirmed"] - row["published"]).total_seconds()
        )
    return {name: values for name, values in stages.items() if values}


def _as_user(user_id: str, method: str, path: str) -> dict[str, str]:
    """What the gateway would add: the user's identity signed for this one request."""
    token = mint(user_id, "user", audience="ticket", method=method, path=path)
    return {ASSERTION_HEADER: token}


async def _one(
    http: aiohttp.ClientSession, user_id: str, seat: str, timeout_s: float, poll_s: float = 0.005
) -> float:
    hold = f"/api/v1/seats/demo/{seat}/hold"
    async with http.post(hold, headers=_as_user(user_id, "POST", hold)) as response:
        assert response.status == 200, await response.text()
    started = time.perf_counter()
    reserve = "/api/v1/reservations/demo"
    async with http.post(
        reserve, json={"seatIds": [seat]}, headers=_as_user(user_id, "POST", reserve)
    ) as response:
        assert response.status == 202, await response.text()
        rid = (await response.json())["reservationId"]
    status_path = f"/api/v1/reservations/demo/{rid}"
    headers = _as_user(user_id, "GET", status_path)
    async with asyncio.timeout(timeout_s):
        while True:
            async with http.get(status_path, headers=headers) as response:
                status = (await response.json())["status"]
            if status == "confirmed":
                return time.perf_counter() - started
            assert status in ("pending", "awaiting_payment"), status
            await asyncio.sleep(poll_s)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--payment-delay-ms", type=int, default=0)
    parser.add_argument("--no-flush", action="store_true")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--per-buyer", type=int, default=8)
    parser.add_argument("--load-poll-ms", type=int, default=100)
    args = parser.parse_args()
    seats_needed = 1 + args.samples + args.concurrency * args.per_buyer
    if seats_needed > SEATS:
        parser.error(f"{seats_needed} reservations need more than the {SEATS} seats")
    configure_logging(LogSettings(level="WARNING"), service="bench")
    with tempfile.TemporaryDirectory() as workdir:
        phases, load_wall = asyncio.run(measure(args, Path(workdir)))
    print(
        f"payment delay {args.payment_delay_ms} ms, post-batch flush "
        f"{'off' if args.no_flush else 'on'}, one poller -> one handler"
    )
    for name, latencies in phases.items():
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        print(
            f"request -> confirmed, {name}: n={len(latencies)} p50 {q[49] * 1000:.0f} ms,"
            f" p95 {q[94] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms,"
            f" max {max(latencies) * 1000:.0f} ms"
        )
    if load_wall:
        total = args.concurrency * args.per_buyer
        print(
            f"under load: {total} reservations confirmed in {load_wall:.1f} s "
            f"({total / load_wall:.1f}/s; status polled every {args.load_poll_ms} ms)"
        )


if __name__ == "__main__":
    main()
