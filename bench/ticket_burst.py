"""A booking burst on the ticket service, before and after a change, in one run (issue 22).

``.venv/bin/python bench/ticket_burst.py --before main [--users 100] [--rounds 4]``

Tier 2 admits up to 100 users at once and they hold a seat and reserve it within seconds,
so the ticket service sees ~100 concurrent holds, then ~100 concurrent reservations, then
the owners' status reads. This bench serves two ticket processes (``python -m urr_ticket``,
production settings but for the test identity key): one from ``--before`` (its
``services/ticket/src`` extracted with ``git archive`` and put first on ``PYTHONPATH``; the
libraries are today's) and one from this tree, on the same real PostgreSQL (a database of
its own on ``--postgres``), Redis (``--redis``) and one private moto SQS server. Each round
runs, for each process in turn (the first alternating), ``--users`` fresh users released
together: every user holds a seat, then (all at once again) reserves it, then reads it at
``/api/v1/events/{id}/reservations/{rid}``. The gateway's signed assertions are minted
before the burst, so the client spends its CPU before the clock starts. Prints P50/P95/P99
per route and variant over all rounds, and the CPU (user + system, ``/proc/<pid>/stat``) the
ticket process and moto spent per request of each phase, with the load average.
"""

# ruff: noqa: S603, S607 - a benchmark script running git and the services from PATH

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from urr_common.identity import ASSERTION_HEADER
from urr_common.identity_testing import identity_env, mint
from urr_devstack.procs import free_port, moto_server
from urr_ticket.app import AUDIENCE
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.testing import create_queues

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
ROUTES = ("hold", "reserve", "status")
WARM = 10


def cpu_seconds(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ticket_source(revision: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "services/ticket/src"],
        capture_output=True,
        check=True,
    )
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "services" / "ticket" / "src"


async def wait_ready(session: aiohttp.ClientSession, port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/health/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ticket process on {port} never became ready")
        await asyncio.sleep(0.2)


def signed(user: str, method: str, path: str) -> dict[str, str]:
    return {ASSERTION_HEADER: mint(user, "user", audience=AUDIENCE, method=method, path=path)}


class Phase:
    """Latencies of one route and the CPU its requests cost."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.ticket_cpu = 0.0
        self.moto_cpu = 0.0


async def burst(
    session: aiohttp.ClientSession,
    base: str,
    calls: list[tuple[str, str, dict[str, str], object]],
    phase: Phase,
    pids: tuple[int, int],
) -> list[object]:
    """Send every call at once; returns the JSON bodies (None for a non-JSON answer)."""
    gate = asyncio.Event()

    async def one(method: str, path: str, headers: dict[str, str], body: object) -> object:
        await gate.wait()
        started = time.perf_counter()
        async with session.request(method, base + path, headers=headers, json=body) as response:
            payload = await response.read()
            status = response.status
        phase.latencies.append((time.perf_counter() - started) * 1000)
        phase.statuses[status] = phase.statuses.get(status, 0) + 1
        try:
            return json.loads(payload)
        except ValueError:
            return None

    tasks = [asyncio.create_task(one(*call)) for call in calls]
    await asyncio.sleep(0)  # every task waits at the gate
    ticket0, moto0 = cpu_seconds(pids[0]), cpu_seconds(pids[1])
    gate.set()
    results = await asyncio.gather(*tasks)
    await asyncio.sleep(0.05)  # replies still being flushed count too
    phase.ticket_cpu += cpu_seconds(pids[0]) - ticket0
    phase.moto_cpu += cpu_seconds(pids[1]) - moto0
    return list(results)


async def round_of(
    session: aiohttp.ClientSession,
    port: int,
    pids: tuple[int, int],
    event_id: str,
    users: list[str],
    seats: list[str],
    phases: dict[str, Phase],
) -> None:
    base = f"http://127.0.0.1:{port}"
    holds = []
    for user, seat in zip(users, seats, strict=True):
        path = f"/api/v1/seats/{event_id}/{seat}/hold"
        holds.append(("POST", path, signed(user, "POST", path), None))
    answers = await burst(session, base, holds, phases["hold"], pids)
    reserves = []
    for user, seat in zip(users, seats, strict=True):
        path = f"/api/v1/reservations/{event_id}"
        reserves.append(("POST", path, signed(user, "POST", path), {"seatIds": [seat]}))
    answers = await burst(session, base, reserves, phases["reserve"], pids)
    reads = []
    for user, answer in zip(users, answers, strict=True):
        if isinstance(answer, dict) and "reservationId" in answer:
            path = f"/api/v1/events/{event_id}/reservations/{answer['reservationId']}"
            reads.append(("GET", path, signed(user, "GET", path), None))
    await burst(session, base, reads, phases["status"], pids)


def start_profiles(
    into: str, variants: dict[str, tuple[int, tuple[int, int]]], moto_pid: int
) -> list[subprocess.Popen[bytes]]:
    """py-spy (raw stacks) on this tree's ticket process and on moto, when asked."""
    if not into:
        return []
    Path(into).mkdir(parents=True, exist_ok=True)
    targets = {"moto": moto_pid}
    for label, (_, (pid, _)) in variants.items():
        targets["ticket-before" if label.startswith("before") else "ticket-after"] = pid
    spy = str(Path(sys.executable).parent / "py-spy")
    return [
        subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
             "--output", str(Path(into) / f"{name}.txt"), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets.items()
    ]


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="urr-bench-ticket-burst-"))
    database = f"urr_bench_burst_{os.getpid()}"
    admin = await asyncpg.connect(args.postgres + "/postgres")
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = f"{args.postgres}/{database}"
    moto = moto_server(free_port(), work / "moto.log")
    moto.die_with_parent = True
    moto.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        endpoint = f"http://{moto.host}:{moto.port}"
        moto_pid = moto.process.pid if moto.process is not None else 0
        queues = await create_queues(endpoint, visibility_timeout_s=30)
        seats_needed = (args.users * args.rounds + WARM) * 2
        event = DemoEvent(
            event_id=f"burst-{uuid.uuid4().hex[:8]}",
            rows=26,
            seats_per_row=max(10, -(-seats_needed // 26)),
            max_seats_per_user=4,
        )
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        await migrate(pool)
        await seed_catalog(pool, event)
        await pool.close()
        env = {
            **os.environ,
            **identity_env(),
            "URR_ENVIRONMENT": "test",
            "URR_POSTGRES__DSN": dsn,
            "URR_REDIS__URL": args.redis,
            "URR_AWS__ENDPOINT_URL": endpoint,
            "URR_AWS__REGION": "us-east-1",
            "URR_AWS__ACCESS_KEY_ID": "test",
            "URR_AWS__SECRET_ACCESS_KEY": "test",
            "URR_SQS__QUEUE_NAME": queues.name,
            "URR_SQS__DLQ_NAME": queues.dlq_name,
            "URR_LOG__LEVEL": "WARNING",
            "URR_RESERVATION_IDS__KEY": "burst-bench-reservation-id-key-0123456789",
        }
        variants: dict[str, tuple[int, tuple[int, int]]] = {}
        before_src = ticket_source(args.before, work / "before")
        for label, src in ((f"before ({args.before})", before_src), ("this tree", None)):
            port = free_port()
            child_env = {**env, "URR_HTTP__PORT": str(port), "URR_METRICS__PORT": str(free_port())}
            if src is not None:
                child_env["PYTHONPATH"] = str(src)
            with (work / f"ticket-{port}.log").open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "urr_ticket"],
                    env=child_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )
            processes.append(process)
            variants[label] = (port, (process.pid, moto_pid))
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            for port, _ in variants.values():
                await wait_ready(session, port)
            # One warm-up burst each (imports, connection pools, the queue URL).
            seats = [seat for seat, *_ in event.seats()]
            for label, (port, pids) in variants.items():
                users = [f"warm-{uuid.uuid4().hex[:6]}-{i}" for i in range(WARM)]
                mine = [seats.pop() for _ in users]
                scratch = {route: Phase() for route in ROUTES}
                await round_of(session, port, pids, event.event_id, users, mine, scratch)
            phases = {label: {route: Phase() for route in ROUTES} for label in variants}
            spies = start_profiles(args.profile, variants, moto_pid)
            load = [os.getloadavg()[0]]
            order = list(variants)
            for number in range(args.rounds):
                for label in order if number % 2 == 0 else reversed(order):
                    port, pids = variants[label]
                    users = [f"u{number}-{uuid.uuid4().hex[:6]}-{i}" for i in range(args.users)]
                    mine = [seats.pop() for _ in users]
                    await round_of(session, port, pids, event.event_id, users, mine, phases[label])
                    await asyncio.sleep(args.pause)
                load.append(os.getloadavg()[0])
            for spy in spies:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
        print(
            f"{args.rounds} rounds x {args.users} users at once per variant (hold, then reserve,"
            f" then read); load average {' -> '.join(f'{value:.2f}' for value in load)}"
        )
        print(
            f"{'variant':18} {'route':8} {'n':>5} {'P50 ms':>8} {'P95 ms':>8} {'P99 ms':>8}"
            f" {'max ms':>8} {'ticket CPU us/req':>17} {'moto CPU us/req':>15}  statuses"
        )
        for label, routes in phases.items():
            for route, phase in routes.items():
                values = phase.latencies or [0.0]
                n = len(phase.latencies) or 1
                print(
                    f"{label:18} {route:8} {len(phase.latencies):5} {quantile(values, 0.5):8.1f}"
                    f" {quantile(values, 0.95):8.1f} {quantile(values, 0.99):8.1f}"
                    f" {max(values):8.1f} {phase.ticket_cpu / n * 1e6:17.0f}"
                    f" {phase.moto_cpu / n * 1e6:15.0f}  {phase.statuses}"
                )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        moto.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", default="main", help="git revision of the before service")
    parser.add_argument("--users", type=int, default=100, help="users released at once")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between bursts")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--profile", default="", help="py-spy the services into this folder")
    parser.add_argument("--keep", action="store_true", help="keep the services' logs")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
