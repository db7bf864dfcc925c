"""CPU per request of the Tier-2 queue service in the flash crowd's mix (issue 22, item 3).

    uv run --frozen python bench/queue_crowd_cpu.py \
        [--arrivals 1500] [--rate 50] [--rounds 2] [--before main] [--pyspy DIR]

Each arrival, one every ``1/rate`` seconds, does what ``make loadtest``'s visitors do at the
queue (``urr_loadtests.scenarios.flow``): ``POST /api/v1/queue/{event}/enter`` with its
``urr-vwr-token`` (the event requires a Tier-1 pass, as the crowd's does), ``GET .../status``
after each ``poll_after_seconds`` (capped at ``--poll-cap``) until admitted, then, after a
booking's worth of time (``--hold``), ``POST .../leave``. Every request carries the gateway's
``X-Urr-Identity``, signed as the gateway signs it (``AssertionSigner``, one assertion reused
for 1 s per user, method and path). The service runs as ``python -m urr_queue`` on a private
redis-server with its admission loop and figures on, Kafka, the console and the Tier-1 place
marker off (their loops are not per request). The event's capacity admits nearly everyone at
once, as in the local crowd: about 1.3 polls per entry.

``--before REV`` runs the same crowd on that revision's ``urr_queue`` and ``urr_common``
(``git archive``, first on ``PYTHONPATH``), alternating with the working tree's in one run:
compare within a run only, the machine is shared.

Printed per run (one JSON line): CPU µs per request of the queue process and of redis-server,
client-side P50/P99/max per kind in ms, the statuses, and the load average; the queue's idle
CPU (ms per s: the admission loop and the figures with nobody calling) and, with ``--floor N``,
its CPU per ``GET /health/live`` with a fresh assertion, sent at the crowd's request rate
before the crowd (the server, the middlewares and the identity check without queue work).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis
from tier1_crowd_cpu import cpu_s, export_revision, loadavg, pct, wait_ready

from urr_common.identity import ASSERTION_HEADER, AssertionSigner
from urr_common.identity_testing import TEST_GATEWAY_KEY, identity_env
from urr_common.tokens import SigningKey, TokenSigner
from urr_devstack.procs import RedisServer, free_port
from urr_queue.config import EventConfig
from urr_queue.store import QueueStore

KINDS = ("enter", "status", "leave")


class Crowd:
    """One run's client: the gateway's assertions and the tallies."""

    def __init__(self, base: str, event_id: str, args: argparse.Namespace) -> None:
        self.base = base
        self.path = f"/api/v1/queue/{event_id}"
        self.args = args
        self.signer = AssertionSigner(TEST_GATEWAY_KEY, reuse_s=1.0)
        self.times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.statuses: dict[str, int] = {}

    async def call(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        method: str,
        user: str,
        cookies: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        path = f"{self.path}/{kind}"
        assertion = self.signer.assertion(user, "user", audience="queue", method=method, path=path)
        headers = {ASSERTION_HEADER: assertion}
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        started = time.perf_counter()
        async with session.request(method, self.base + path, headers=headers) as answer:
            body = await answer.read()
            key = f"{kind} {answer.status}"
        self.times[kind].append((time.perf_counter() - started) * 1000)
        self.statuses[key] = self.statuses.get(key, 0) + 1
        return dict(json.loads(body)) if body else {}

    async def arrival(self, session: aiohttp.ClientSession, vwr_token: str) -> None:
        user = str(uuid.uuid4())
        answer = await self.call(session, "enter", "POST", user, {"urr-vwr-token": vwr_token})
        while answer.get("status") == "waiting":
            wait = min(float(answer.get("poll_after_seconds") or 1), self.args.poll_cap)
            await asyncio.sleep(wait * random.uniform(0.8, 1.0))
            answer = await self.call(session, "status", "GET", user)
        if answer.get("status") == "admitted":
            # The visitor books; the ticket service's calls are not the queue's.
            await asyncio.sleep(random.uniform(0.5, 1.5) * self.args.hold)
        await self.call(session, "leave", "POST", user)

    async def floor(self, count: int, rate: float) -> None:
        """``GET /health/live`` with a fresh assertion each, open loop at ``rate``: what the
        server, the middlewares and the identity check cost with no queue work at all."""
        async with aiohttp.ClientSession() as session:

            async def live(n: int) -> None:
                assertion = self.signer.sign(
                    f"floor-{n}",
                    "user",
                    audience="queue",
                    method="GET",
                    path="/health/live",
                    now=time.time(),
                )
                headers = {ASSERTION_HEADER: assertion}
                async with session.get(f"{self.base}/health/live", headers=headers) as answer:
                    await answer.read()

            started = time.monotonic()
            tasks = []
            for n in range(count):
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(live(n)))
            await asyncio.gather(*tasks)

    async def run(self, vwr_tokens: list[str]) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = []
            started = time.monotonic()
            for n, token in enumerate(vwr_tokens):
                delay = started + n / self.args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.arrival(session, token)))
            await asyncio.gather(*tasks)


async def configure(redis_url: str, event_id: str, args: argparse.Namespace) -> None:
    redis = Redis.from_url(redis_url)
    try:
        config = EventConfig(
            capacity=args.capacity,
            admit_per_second=args.admit_per_second,
            session_seconds=300,
            idle_timeout_seconds=60,
            require_tier1_token=True,
        )
        await QueueStore(redis).configure(event_id, config)
    finally:
        await redis.aclose()


async def forget(redis_url: str, event_id: str) -> None:
    """Take a finished run's event off the admission loop's list (later runs tick it not)."""
    redis = Redis.from_url(redis_url)
    try:
        await QueueStore(redis).forget_event(event_id)
    finally:
        await redis.aclose()


async def redis_cpu_s(redis_url: str) -> float:
    redis = Redis.from_url(redis_url)
    try:
        info: dict[str, Any] = await redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        await redis.aclose()


def service_env(work: Path, redis_url: str, port: int, src: list[Path]) -> dict[str, str]:
    env = {
        **os.environ,
        "URR_ENVIRONMENT": "local",
        "URR_REDIS__URL": redis_url,
        "URR_HTTP__PORT": str(port),
        "URR_METRICS__PORT": str(free_port()),
        "URR_INTERNAL__PORT": "0",
        "URR_QUEUE_EVENTS__ENABLED": "false",
        "URR_RESERVATION_EVENTS__ENABLED": "false",
        "URR_TIER1_PLACES__ENABLED": "false",
        "URR_CONSOLE__ENABLED": "false",
        "URR_ENTRY_TOKENS__PRIVATE_KEY_FILE": str(work / "entry" / "local-1.pem"),
        "URR_VWR_TRUST__PUBLIC_KEY_FILES": json.dumps([str(work / "vwr" / "*.pem")]),
        "URR_LOG__LEVEL": "INFO",
        **identity_env(),
    }
    if src:
        paths = [str(path) for path in src]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return env


def run_once(
    label: str,
    src: list[Path],
    args: argparse.Namespace,
    work: Path,
    redis_url: str,
    vwr_tokens: dict[str, list[str]],
) -> dict[str, Any]:
    event_id = f"crowd-{label}"
    asyncio.run(configure(redis_url, event_id, args))
    port = free_port()
    log = (work / f"queue-{label}.log").open("wb")
    service = subprocess.Popen(
        [sys.executable, "-m", "urr_queue"],
        env=service_env(work, redis_url, port, src),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    spy: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready")
        time.sleep(1.0)
        if args.pyspy:
            argv = [shutil.which("py-spy") or "py-spy", "record", "--pid", str(service.pid)]
            # --native (C frames too) needs the process paused at each sample.
            argv += ["-r", "200", "--native" if args.native else "--nonblocking"]
            argv += ["--format", "raw"]
            argv += ["-o", str(Path(args.pyspy) / f"{label}.txt")]
            spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        idle0 = cpu_s(service.pid)
        time.sleep(args.idle)
        idle = cpu_s(service.pid) - idle0
        crowd = Crowd(f"http://127.0.0.1:{port}", event_id, args)
        floor_us = None
        if args.floor:
            floor0 = cpu_s(service.pid)
            asyncio.run(crowd.floor(args.floor, args.rate * 3.3))
            floor_us = round((cpu_s(service.pid) - floor0) / args.floor * 1e6)
        before, redis_before, load0 = (
            cpu_s(service.pid),
            asyncio.run(redis_cpu_s(redis_url)),
            loadavg(),
        )
        wall0 = time.monotonic()
        asyncio.run(crowd.run(vwr_tokens[event_id]))
        wall = time.monotonic() - wall0
        used, redis_used = (
            cpu_s(service.pid) - before,
            asyncio.run(redis_cpu_s(redis_url)) - redis_before,
        )
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        service.terminate()
        service.wait(30)
        log.close()
        asyncio.run(forget(redis_url, event_id))
    requests = sum(len(values) for values in crowd.times.values())
    result: dict[str, Any] = {
        "label": label,
        "requests": requests,
        "queue_us_per_req": round(used / requests * 1e6),
        "redis_us_per_req": round(redis_used / requests * 1e6),
        # The admission loop and the figures with nobody calling (CPU ms per second).
        "idle_ms_per_s": round(idle / args.idle * 1000, 1),
        "floor_us_per_req": floor_us,
    }
    for kind in KINDS:
        values = crowd.times[kind]
        result[f"{kind}_n"] = len(values)
        result[f"{kind}_p50_ms"] = round(statistics.median(values), 2) if values else None
        result[f"{kind}_p99_ms"] = round(pct(values, 0.99), 2) if values else None
        result[f"{kind}_max_ms"] = round(max(values), 1) if values else None
    result.update(
        {"statuses": crowd.statuses, "wall_s": round(wall, 1), "load": f"{load0} -> {loadavg()}"}
    )
    return result


def tier1_tokens(key: SigningKey, event_id: str, count: int) -> list[str]:
    """The crowd's ``urr-vwr-token`` passes, as Tier 1 signs them (``urr_vwr_lambda.tier1``)."""
    signer = TokenSigner(key, "urr-vwr", "urr-vwr", 1800)
    passes = []
    for n in range(count):
        request_id = str(uuid.uuid4())
        passes.append(signer.sign(request_id, {"evt": event_id, "rid": request_id, "pos": n + 1}))
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arrivals", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=2000)
    parser.add_argument("--admit-per-second", type=float, default=40.0)
    parser.add_argument("--poll-cap", type=float, default=5.0, help="longest pause between polls")
    parser.add_argument("--hold", type=float, default=3.0, help="mean seconds admitted")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measured")
    parser.add_argument(
        "--floor", type=int, default=0, help="this many GET /health/live first (the floor)"
    )
    parser.add_argument("--before", help="a git revision to compare with (e.g. main)")
    parser.add_argument("--pyspy", help="a folder for py-spy raw profiles of the queue")
    parser.add_argument("--native", action="store_true", help="py-spy --native")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="urr-queue-crowd-") as folder:
        work = Path(folder)
        vwr_key = SigningKey.generate("vwr-bench-1")
        (work / "vwr").mkdir()
        (work / "vwr" / "vwr-bench-1.pem").write_bytes(vwr_key.verification_key().to_pem())
        variants: list[tuple[str, list[Path]]] = [("after", [])]
        if args.before:
            into = work / "before"
            src = [
                export_revision(args.before, into, "services/queue/src"),
                export_revision(args.before, into, "libs/common/src"),
            ]
            # Compiled now, as the working tree's are (``make sync``): not in the measured CPU.
            subprocess.run([sys.executable, "-m", "compileall", "-q", *map(str, src)], check=True)  # noqa: S603
            variants.insert(0, ("before", src))
        labels = [f"{name}-{n}" for n in range(args.rounds) for name, _ in variants]
        tokens = {
            f"crowd-{label}": tier1_tokens(vwr_key, f"crowd-{label}", args.arrivals)
            for label in labels
        }
        redis_server = RedisServer(port=free_port(), workdir=work / "redis")
        redis_server.start()
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
        try:
            for round_no in range(args.rounds):
                order = variants if round_no % 2 == 0 else list(reversed(variants))
                for name, src in order:
                    result = run_once(
                        f"{name}-{round_no}", src, args, work, redis_server.url, tokens
                    )
                    results[name].append(result)
                    print(json.dumps(result), flush=True)
        finally:
            redis_server.stop()
        for name, runs in results.items():
            fields = ["queue_us_per_req", "redis_us_per_req"]
            fields += [f"{kind}_{q}_ms" for kind in KINDS for q in ("p50", "p99")]
            figures = {field: statistics.median(run[field] for run in runs) for field in fields}
            print(name, "median of rounds:", json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
