"""Auth service figures: argon2 cost, login/me/JWKS latency, and loop health during logins.

Run: ``uv run python bench/auth_login.py [--logins 24] [--requests 400]``

Starts the real application in this process on a free loopback port, against a throw-away
database created on ``URR_BENCH_POSTGRES_ADMIN_DSN`` (default: the local trust-auth server)
and dropped at the end. Prints figures; asserts nothing. The client shares the process and
the machine with the server, so the numbers are an upper bound on latency, not a capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

from urr_auth.app import create_app
from urr_auth.passwords import password_hasher
from urr_auth.settings import Argon2Settings, AuthSettings
from urr_common.settings import load_settings

ADMIN_DSN = os.environ.get(
    "URR_BENCH_POSTGRES_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PASSWORD = "a benchmark password"  # noqa: S105 - a throw-away account


def _summary(name: str, samples_s: list[float], wall_s: float) -> str:
    ms = sorted(sample * 1000 for sample in samples_s)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    rate = len(ms) / wall_s if wall_s else 0.0
    return (
        f"{name:<34} n={len(ms):<4} p50={statistics.median(ms):7.1f} ms"
        f"  p95={p95:7.1f} ms  max={ms[-1]:7.1f} ms  {rate:7.1f}/s"
    )


async def _measure(
    concurrency: int, total: int, call: Callable[[], Awaitable[None]]
) -> tuple[list[float], float]:
    samples: list[float] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def _bench(base: str, logins: int, requests: int) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/api/v1/auth/register",
            json={"email": "bench@example.com", "password": PASSWORD},
        ) as response:
            assert response.status == 201, await response.text()
        token = ""

        async def login() -> None:
            nonlocal token
            async with session.post(
                f"{base}/api/v1/auth/login",
                json={"email": "bench@example.com", "password": PASSWORD},
            ) as response:
                assert response.status == 200
                token = (await response.json())["access_token"]

        async def unknown_login() -> None:
            async with session.post(
                f"{base}/api/v1/auth/login",
                json={"email": "nobody@example.com", "password": PASSWORD},
            ) as response:
                assert response.status == 401
                await response.read()

        for concurrency in (1, 2, 4):
            samples, wall = await _measure(concurrency, logins, login)
            print(_summary(f"login (concurrency {concurrency})", samples, wall))
        samples, wall = await _measure(2, logins, unknown_login)
        print(_summary("login, unknown e-mail (conc. 2)", samples, wall))

        async def me() -> None:
            async with session.get(
                f"{base}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
            ) as response:
                assert response.status == 200
                await response.read()

        async def jwks() -> None:
            async with session.get(f"{base}/.well-known/jwks.json") as response:
                assert response.status == 200
                await response.read()

        async def live() -> None:
            async with session.get(f"{base}/health/live") as response:
                await response.read()

        for name, call in (("me (concurrency 8)", me), ("jwks (concurrency 8)", jwks)):
            samples, wall = await _measure(8, requests, call)
            print(_summary(name, samples, wall))

        idle, idle_wall = await _measure(1, 100, live)
        print(_summary("health/live, idle", idle, idle_wall))
        busy_logins = asyncio.create_task(_measure(4, logins * 2, login))
        await asyncio.sleep(0.05)
        busy, busy_wall = await _measure(1, 100, live)
        await busy_logins
        print(_summary("health/live, 4 logins in flight", busy, busy_wall))


async def main(logins: int, requests: int) -> None:
    argon2 = Argon2Settings()
    hasher = password_hasher(argon2)
    stored = hasher.hash(PASSWORD)
    started = time.perf_counter()
    for _ in range(5):
        hasher.verify(stored, PASSWORD)
    per_verify_ms = (time.perf_counter() - started) / 5 * 1000
    print(
        f"argon2id t={argon2.time_cost} m={argon2.memory_cost_kib} KiB p={argon2.parallelism}:"
        f" {per_verify_ms:.1f} ms per verify (one thread)"
    )

    name = f"urr_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    dsn = f"{ADMIN_DSN.rpartition('/')[0]}/{name}"
    try:
        with tempfile.TemporaryDirectory() as keys:
            settings = load_settings(
                AuthSettings,
                environment="test",
                postgres={"dsn": dsn},
                access_tokens={"private_key_file": Path(keys) / "bench-1.pem", "key_id": "bench-1"},
                bootstrap_admin_email=None,
                bootstrap_admin_password=None,
            )
            runner = web.AppRunner(create_app(settings), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                await _bench(f"http://127.0.0.1:{port}", logins, requests)
            finally:
                await runner.cleanup()
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=24, help="logins per concurrency level")
    parser.add_argument("--requests", type=int, default=400, help="requests per cheap route")
    args = parser.parse_args()
    asyncio.run(main(args.logins, args.requests))
