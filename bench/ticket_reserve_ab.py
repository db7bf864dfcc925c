"""The reservation route, before and after a change, alternated in one process (issue 22).

``.venv/bin/python bench/ticket_reserve_ab.py [--before main] [--rounds 6] [--per-round 40]
[--rate 8]`` serves the ticket app on real PostgreSQL (a database of its own on
``--postgres``), Redis (``--redis``) and a private moto SQS, with the worker handler fed from
the queue in its own thread (the local poller, as in the stack), so commands are drained at
once as in a crowd's booking burst. The ``before`` handler is ``urr_ticket.routes.reserve``
read from ``--before`` (a git revision) and mounted beside today's on the same app, pools and
loop; each round reserves ``--per-round`` fresh holds through one and then the other (the
first of the pair alternating), evenly spaced at ``--rate`` a second, so both meet the same
machine load. While requests run, ``pg_stat_activity`` is sampled every 20 ms for backends
waiting on a lock. Prints each variant's latency (client side, P50/P90/P95/max) and lock
waits, and the load average.
"""

# ruff: noqa: S603, S607 - a benchmark script running git from PATH

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from urr_common.identity_testing import act_as, as_gateway, identity_settings
from urr_common.settings import load_settings
from urr_devstack.procs import free_port, moto_server
from urr_ticket.app import AUDIENCE, create_app
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket.settings import TicketSettings
from urr_ticket_worker import handler
from urr_ticket_worker.local.poller import Poller, resolve_queue
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.testing import create_queues, make_settings, sqs_client

REPO = Path(__file__).resolve().parents[1]
ROUTES = "services/ticket/src/urr_ticket/routes.py"


def before_reserve(revision: str) -> Any:
    """``reserve`` of ``revision``'s routes module (imports resolve to today's packages)."""
    source = subprocess.run(
        ["git", "show", f"{revision}:{ROUTES}"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    module = types.ModuleType("urr_ticket_routes_before")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{revision}:{ROUTES}", "exec"), module.__dict__)  # noqa: S102
    return module.reserve


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def sample_locks(
    dsn: str, stop: asyncio.Event, phase: list[str], out: dict[str, int]
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            out[phase[0]] = out.get(phase[0], 0) + int(waiting)
            out[phase[0] + " samples"] = out.get(phase[0] + " samples", 0) + 1
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> None:
    database = f"urr_bench_reserve_{os.getpid()}"
    admin = await asyncpg.connect(args.postgres + "/postgres")
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = f"{args.postgres}/{database}"
    moto = moto_server(free_port(), Path(tempfile.mkdtemp()) / "moto.log")
    moto.die_with_parent = True
    moto.start()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lambda")
    stop = asyncio.Event()
    try:
        endpoint = f"http://{moto.host}:{moto.port}"
        queues = await create_queues(endpoint, visibility_timeout_s=30)
        # An event of its own: Redis (shared) keeps the holds of an earlier run for 300 s.
        event = DemoEvent(
            event_id=f"bench-{uuid.uuid4().hex[:8]}",
            rows=26,
            seats_per_row=40,
            max_seats_per_user=4,
        )
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        await migrate(pool)
        await seed_catalog(pool, event)
        settings = load_settings(
            TicketSettings,
            environment="test",
            redis={"url": args.redis},
            postgres={"dsn": dsn, "min_connections": 1, "max_connections": 10},
            aws={
                "endpoint_url": endpoint,
                "region": "us-east-1",
                "access_key_id": "test",
                "secret_access_key": "test",
            },
            sqs={"queue_name": queues.name, "dlq_name": queues.dlq_name, "wait_time_s": 1},
            identity=identity_settings(),
        )
        app = create_app(settings, registry=CollectorRegistry())
        app.router.add_post("/api/v1/before/{event_id}", before_reserve(args.before))
        worker = make_settings(dsn, moto=endpoint, queues=queues)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, handler.configure, worker)

        async def poll() -> None:
            async with sqs_client(endpoint) as sqs:
                poller = Poller(sqs, await resolve_queue(sqs, queues.name), worker, executor)
                while not stop.is_set():
                    await poller.poll_once()

        poll_task = asyncio.create_task(poll())
        client = TestClient(TestServer(app), middlewares=(as_gateway(AUDIENCE),))
        await client.start_server()
        seats = [seat for seat, *_ in event.seats()]
        paths = {
            "before": f"/api/v1/before/{event.event_id}",
            "after": f"/api/v1/reservations/{event.event_id}",
        }
        latencies: dict[str, list[float]] = {"before": [], "after": []}
        statuses: dict[str, dict[int, int]] = {"before": {}, "after": {}}
        phase = ["idle"]
        locks: dict[str, int] = {}
        sampler = asyncio.create_task(sample_locks(dsn, stop, phase, locks))
        load_before = os.getloadavg()
        tag = uuid.uuid4().hex[:6]
        for round_ in range(args.rounds):
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for variant in order:
                users = [f"{tag}-{variant}-{round_}-{i}" for i in range(args.per_round)]
                mine = [seats.pop() for _ in users]
                phase[0] = "holds"
                held = await asyncio.gather(
                    *(
                        client.post(
                            f"/api/v1/seats/{event.event_id}/{seat}/hold", headers=act_as(user)
                        )
                        for user, seat in zip(users, mine, strict=True)
                    )
                )
                if any(response.status != 200 for response in held):
                    raise SystemExit(f"a hold failed: {[r.status for r in held]}")
                phase[0] = variant

                async def reserve(user: str, seat: str, delay: float, variant: str) -> None:
                    await asyncio.sleep(delay)
                    started = time.perf_counter()
                    response = await client.post(
                        paths[variant], json={"seatIds": [seat]}, headers=act_as(user)
                    )
                    await response.read()
                    latencies[variant].append((time.perf_counter() - started) * 1000)
                    statuses[variant][response.status] = (
                        statuses[variant].get(response.status, 0) + 1
                    )

                await asyncio.gather(
                    *(
                        reserve(user, seat, i / args.rate, variant)
                        for i, (user, seat) in enumerate(zip(users, mine, strict=True))
                    )
                )
                await asyncio.sleep(0.5)  # the worker drains the round's last commands
        load_after = os.getloadavg()
        stop.set()
        await sampler
        await asyncio.wait_for(poll_task, 20)
        await client.close()
        booked = await pool.fetch(
            "SELECT status, count(*) AS n FROM reservations GROUP BY status ORDER BY status"
        )
        await pool.close()
        print(f"before = {args.before}:{ROUTES} reserve; after = the working tree")
        print(
            f"{args.rounds} rounds x {args.per_round} reservations per variant at {args.rate}/s;"
            f" load average {load_before[0]:.2f} -> {load_after[0]:.2f}"
        )
        for variant in ("before", "after"):
            values = latencies[variant]
            print(
                f"{variant:6s} n={len(values)} statuses={statuses[variant]}"
                f" P50 {quantile(values, 0.5):.1f} P90 {quantile(values, 0.9):.1f}"
                f" P95 {quantile(values, 0.95):.1f} max {max(values):.1f} ms;"
                f" lock waits seen {locks.get(variant, 0)} in"
                f" {locks.get(variant + ' samples', 0)} samples"
            )
        print("reservations by status:", {row["status"]: row["n"] for row in booked})
    finally:
        stop.set()
        await loop.run_in_executor(executor, handler.close)
        executor.shutdown(wait=True)
        moto.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default="main", help="git revision of the before handler")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--rate", type=float, default=8.0, help="reservations a second")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    if args.per_round * 2 * args.rounds > 26 * 40:
        parser.error("at most 1,040 reservations in all (one seat each)")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
