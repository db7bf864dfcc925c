"""Every long-running booking process starts from its documented command, reports health on
its port, and stops cleanly on SIGTERM (what the process manager of ``make up`` relies on)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from urr_devstack.procs import free_port
from urr_ticket_worker.testing import Queues

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: The poller runs as a subprocess in test_worker_sqs.py; the payment stand-in shares the
#: consumer loop and process shell with the stats consumer. Fewer processes keep this test
#: within seconds on a busy two-core machine.
COMMANDS = {
    "ticket": ["-m", "urr_ticket"],
    "relay": ["-m", "urr_ticket_worker.relay"],
    "stats": ["-m", "urr_ticket_worker.stats"],
    "outcomes": ["-m", "urr_ticket.outcomes"],
}


async def wait_ready(port: int, timeout_s: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/health/ready") as response:
                    body: dict[str, object] = await response.json()
                    if response.status == 200:
                        return body
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, f"port {port} never became ready"
            await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_each_process_serves_health_and_stops_on_sigterm(
    postgres_dsn: str,
    redis_url: str,
    moto_endpoint: str,
    queues: Queues,
    booking_topics: str,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "URR_POSTGRES__DSN": postgres_dsn,
        "URR_REDIS__URL": redis_url,
        "URR_KAFKA__BOOTSTRAP_SERVERS": booking_topics,
        "URR_AWS__ENDPOINT_URL": moto_endpoint,
        "URR_AWS__REGION": "us-east-1",
        "URR_AWS__ACCESS_KEY_ID": "test",
        "URR_AWS__SECRET_ACCESS_KEY": "test",
        "URR_SQS__QUEUE_NAME": queues.name,
        "URR_SQS__WAIT_TIME_S": "1",
        "URR_LOG__LEVEL": "WARNING",
        "URR_HTTP__USE_UVLOOP": "false",
    }
    processes: dict[str, tuple[asyncio.subprocess.Process, int]] = {}
    try:
        for name, argv in COMMANDS.items():
            port = free_port()
            with (tmp_path / f"{name}.log").open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    *argv,
                    env={**env, "URR_HTTP__PORT": str(port)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            processes[name] = (process, port)
        for name, (_, port) in processes.items():
            body = await wait_ready(port)
            assert body["status"] == "ready", (name, body)
        for process, _ in processes.values():
            process.send_signal(signal.SIGTERM)
        for name, (process, _) in processes.items():
            code = await asyncio.wait_for(process.wait(), 25)
            assert code == 0, (name, (tmp_path / f"{name}.log").read_text()[-2000:])
    finally:
        for process, _ in processes.values():
            if process.returncode is None:
                process.kill()
                await process.wait()
