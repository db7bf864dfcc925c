"""``python -m urr_auth`` as an operator runs it: settings from the environment, SIGTERM stops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from urr_auth.testing import FAST_ARGON2
from urr_devstack.procs import free_port

pytestmark = pytest.mark.slow


async def _wait_ready(
    session: aiohttp.ClientSession, base: str, process: asyncio.subprocess.Process
) -> None:
    async with asyncio.timeout(30):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"the server exited with {process.returncode}")
            try:
                async with session.get(f"{base}/health/ready") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


async def test_the_server_starts_from_the_environment_and_stops_on_sigterm(
    postgres_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("URR_")}
    env.update(
        {
            "URR_HTTP__PORT": str(port),
            "URR_POSTGRES__DSN": postgres_dsn,
            "URR_ACCESS_TOKENS__PRIVATE_KEY_FILE": str(tmp_path / "keys" / "proc-1.pem"),
            "URR_ACCESS_TOKENS__KEY_ID": "proc-1",
            "URR_BOOTSTRAP_ADMIN_EMAIL": "root@example.com",
            "URR_BOOTSTRAP_ADMIN_PASSWORD": "from the environment",
            "URR_ARGON2__TIME_COST": str(FAST_ARGON2["time_cost"]),
            "URR_ARGON2__MEMORY_COST_KIB": str(FAST_ARGON2["memory_cost_kib"]),
            "URR_ARGON2__PARALLELISM": str(FAST_ARGON2["parallelism"]),
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "urr_auth",  # no sub-command: serving is the default
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, base, process)
            async with session.post(
                f"{base}/api/v1/auth/login",
                json={"email": "root@example.com", "password": "from the environment"},
            ) as response:
                assert response.status == 200
                assert (await response.json())["user"]["role"] == "admin"
            async with session.get(f"{base}/.well-known/jwks.json") as response:
                assert [key["kid"] for key in (await response.json())["keys"]] == ["proc-1"]
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()
    events = [orjson.loads(line) for line in stdout.splitlines() if line.startswith(b"{")]
    names = [event["event"] for event in events]
    assert "listening" in names
    assert "stopped" in names
    assert all(event["service"] == "auth" for event in events)
    assert b"from the environment" not in stdout + stderr
