"""A booking burst on the ticket service, before and after a change, in one run (issue 22).

``.venv/bin/python bench/ticket_burst.py --before main [--users 100] [--rounds 4]``

Tier 2 admits up to 100 users at once and they hold a seat and reserve it within seconds, so
the ticket service sees ~100 concurrent holds, then ~100 concurrent reservations, then the
owners' status reads. This bench serves two ticket processes (``python -m urr_ticket``,
production settings but for the test identity key): one from ``--before`` (its
``services/ticket/src`` extracted with ``git archive`` and put first on ``PYTHONPATH``; the
libraries are this tree's, ``libs/common`` included) and one from this tree, on the same real
PostgreSQL (a database of its own on ``--postgres``) and Redis (``--redis``), each with a
private moto SQS server run by its own tree's ``urr_devstack.moto_server``
(``tools/devstack/src`` of ``--before`` too), so the figures are the whole change's, the local
stand-in's included. Each round runs, for each process in turn (the first alternating),
``--users`` fresh users released together: every user holds a seat, then (all at once again)
reserves it, then reads it at ``/api/v1/events/{id}/reservations/{rid}``. No worker runs: the
queue is emptied before each burst (outside the clock), as the stack's worker keeps it short.
The gateway's signed assertions are minted before the burst, so the client spends its CPU
before the clock starts. Prints P50/P95/P99 per route and variant over all rounds, and the CPU
(user + system, ``/proc/<pid>/stat``) the ticket process and its moto spent per request of each
phase, with the load average. ``--profile DIR`` also records py-spy stacks of all four.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import asyncpg

from urr_common.identity import ASSERTION_HEADER
from urr_common.identity_testing import identity_env, mint
from urr_devstack.procs import ServerProcess, free_port
from urr_ticket.app import AUDIENCE
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket_worker.schema import migrate
from urr_ticket_worker.testing import create_queues, sqs_client

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


def tree_source(revision: str, into: Path) -> Path:
    """``revision``'s ticket service and devstack (its moto launcher) extracted into ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, "services/ticket/src", "tools/devstack/src"],
        capture_output=True,
        check=True,
    )
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


class Variant(NamedTuple):
    port: int
    #: The ticket process and its moto server.
    pids: tuple[int, int]
    endpoint: str
    queue_url: str


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
    calls: Sequence[tuple[str, str, dict[str, str], object]],
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


async def empty(endpoint: str, url: str) -> None:
    """Receive and delete until the queue is empty (PurgeQueue: once a minute)."""
    async with sqs_client(endpoint) as sqs:
        await empty_with(sqs, url)


async def empty_with(sqs: Any, url: str) -> None:
    while True:
        response = await sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60
        )
        messages = response.get("Messages", [])
        if not messages:
            return
        await sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )


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


def start_profiles(into: str, variants: dict[str, Variant]) -> list[subprocess.Popen[bytes]]:
    """py-spy (raw stacks) on both ticket processes and their moto servers, when asked."""
    if not into:
        return []
    Path(into).mkdir(parents=True, exist_ok=True)
    targets = {}
    for label, variant in variants.items():
        name = "before" if label.startswith("before") else "after"
        targets[f"ticket-{name}"], targets[f"moto-{name}"] = variant.pids
    spy = str(Path(sys.executable).parent / "py-spy")
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--output",
                str(Path(into) / f"{name}.txt"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, pid in targets.items()
    ]


def launch_ticket(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "urr_ticket"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


async def start_variant(
    src: Path | None,
    env: dict[str, str],
    work: Path,
    args: argparse.Namespace,
    started: list[Any],
) -> Variant:
    """A moto server (``src``'s ``urr_devstack.moto_server``) with a queue of its own, and a
    ticket process (``src``'s, or this tree's with ``--env``) on it."""
    extra = {} if src is None else {"PYTHONPATH": str(src / "tools/devstack/src")}
    moto_port = free_port()
    moto = ServerProcess(
        "moto",
        [sys.executable, "-m", "urr_devstack.moto_server", "-p", str(moto_port)],
        moto_port,
        work / f"moto-{moto_port}.log",
        env=extra,
        die_with_parent=True,
    )
    started.append(moto)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto_port}"
    queues = await create_queues(endpoint, visibility_timeout_s=30)
    port = free_port()
    child_env = {
        **env,
        "URR_HTTP__PORT": str(port),
        "URR_METRICS__PORT": str(free_port()),
        "URR_AWS__ENDPOINT_URL": endpoint,
        "URR_SQS__QUEUE_NAME": queues.name,
        "URR_SQS__DLQ_NAME": queues.dlq_name,
    }
    if src is not None:
        child_env["PYTHONPATH"] = str(src / "services/ticket/src")
    else:
        child_env.update(item.split("=", 1) for item in args.env)
    process = launch_ticket(child_env, work / f"ticket-{port}.log")
    started.append(process)
    moto_pid = moto.process.pid if moto.process is not None else 0
    return Variant(port, (process.pid, moto_pid), endpoint, queues.url)


async def measure(
    variants: dict[str, Variant], event: DemoEvent, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Phase]], list[float]]:
    """A warm-up burst each, then ``--rounds`` rounds alternating the variants' order."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for variant in variants.values():
            await wait_ready(session, variant.port)
        # One warm-up burst each (imports, connection pools, the queue URL).
        seats = [seat for seat, *_ in event.seats()]
        for port, pids, _, _ in variants.values():
            users = [f"warm-{uuid.uuid4().hex[:6]}-{i}" for i in range(WARM)]
            mine = [seats.pop() for _ in users]
            scratch = {route: Phase() for route in ROUTES}
            await round_of(session, port, pids, event.event_id, users, mine, scratch)
        phases = {label: {route: Phase() for route in ROUTES} for label in variants}
        spies = start_profiles(args.profile, variants)
        load = [os.getloadavg()[0]]
        order = list(variants)
        for number in range(args.rounds):
            for label in order if number % 2 == 0 else reversed(order):
                port, pids, endpoint, queue_url = variants[label]
                users = [f"u{number}-{uuid.uuid4().hex[:6]}-{i}" for i in range(args.users)]
                mine = [seats.pop() for _ in users]
                # The stack's worker keeps the queue short; moto's cost per send grows
                # with the messages it holds, so each burst starts on an empty queue.
                await empty(endpoint, queue_url)
                await round_of(session, port, pids, event.event_id, users, mine, phases[label])
                await asyncio.sleep(args.pause)
            load.append(os.getloadavg()[0])
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
    return phases, load


def stop_started(started: list[Any]) -> None:
    """Stop what ``start_variant`` started, the last first (a ticket process before its
    moto): servers with their ``stop``, processes with SIGTERM (SIGKILL after 20 s)."""
    for thing in reversed(started):
        if isinstance(thing, subprocess.Popen):
            thing.terminate()
            try:
                thing.wait(20)
            except subprocess.TimeoutExpired:
                thing.kill()
        else:
            thing.stop()


async def clean_up(
    started: list[Any],
    admin: asyncpg.Connection,
    databases: Sequence[str],
    work: Path,
    *,
    keep: bool,
) -> None:
    """Stop what was started, drop the bench's databases, remove the logs unless kept."""
    stop_started(started)
    for database in databases:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    await admin.close()
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"logs kept in {work}")


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every ticket bench shares: the before revision, PostgreSQL, this tree's
    extra environment, keeping the logs."""
    parser.add_argument("--before", default="main", help="git revision of the before service")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for this tree's ticket process"
    )
    parser.add_argument("--keep", action="store_true", help="keep the services' logs")


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="urr-bench-ticket-burst-"))
    database = f"urr_bench_burst_{os.getpid()}"
    admin = await asyncpg.connect(args.postgres + "/postgres")
    await admin.execute(f'CREATE DATABASE "{database}"')
    dsn = f"{args.postgres}/{database}"
    started: list[Any] = []
    try:
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
            "URR_AWS__REGION": "us-east-1",
            "URR_AWS__ACCESS_KEY_ID": "test",
            "URR_AWS__SECRET_ACCESS_KEY": "test",
            "URR_LOG__LEVEL": "WARNING",
            "URR_RESERVATION_IDS__KEY": "burst-bench-reservation-id-key-0123456789",
        }
        before_src = tree_source(args.before, work / "before")
        variants = {
            f"before ({args.before})": await start_variant(before_src, env, work, args, started),
            "this tree": await start_variant(None, env, work, args, started),
        }
        phases, load = await measure(variants, event, args)
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
        await clean_up(started, admin, [database], work, keep=args.keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    common_arguments(parser)
    parser.add_argument("--users", type=int, default=100, help="users released at once")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between bursts")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--profile", default="", help="py-spy the services into this folder")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
