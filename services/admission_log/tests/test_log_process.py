"""``python -m urr_admission_log`` against real Kafka and PostgreSQL: admissions published on
queue-events become a signed log that urr-verify accepts, across a restart, without doubles."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from urr_devstack.procs import free_port
from urr_devstack.testing import admission_log_env, wait_process_listening
from urr_verify.log import verify_receipt

# Two start-ups of a Python service on a starved host (see START_UP_S) and two consumer-group
# joins (about 5 s each on Tansu): over the suite's 60 s in a CI run although all was correct.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(180)]


def _record(event_id: str, i: int) -> dict[str, Any]:
    return {
        "id": f"{event_id}-{i}",
        "type": "admitted",
        "eventId": event_id,
        "userId": f"user-{i}",
        "queueNumber": i + 1,
        "at": 1_000 + i,
    }


async def _publish(bootstrap: str, topic: str, values: list[bytes], key: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _start(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    # Logs go to a file: an undrained pipe would block the service once full.
    with log.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urr_admission_log", env=env, stdout=sink, stderr=sink
        )


async def _head_size(
    session: aiohttp.ClientSession,
    base: str,
    event_id: str,
    want: int,
    process: asyncio.subprocess.Process,
    log: Path,
) -> dict[str, Any]:
    # The 30 s for the log's work count from its listening, not from the spawn: start-up alone
    # took 17-25 s on a loaded 2-core host (the second wait timed out 2 s after the restarted
    # log was assigned its partitions, in a run that failed).
    await wait_process_listening(int(urlsplit(base).port or 0), process, log)
    async with asyncio.timeout(30):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"the log exited with {process.returncode}")
            try:
                async with session.get(f"{base}/v1/log/{event_id}/sth") as response:
                    if response.status == 200:
                        body: dict[str, Any] = await response.json()
                        if body["size"] >= want:
                            return body
            except aiohttp.ClientConnectionError:
                pass  # still starting
            await asyncio.sleep(0.2)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await process.wait()


async def test_admissions_become_a_verifiable_log_across_a_restart(
    postgres_dsn: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    port, event_id = free_port(), f"e{uuid.uuid4().hex[:8]}"
    topic = f"queue-events-{uuid.uuid4().hex[:6]}"
    env = admission_log_env(port, postgres_dsn, kafka_bootstrap, topic, tmp_path, sign_every_s=0.2)
    first = [orjson.dumps(_record(event_id, i)) for i in range(30)]
    noise = [b"not json", orjson.dumps({"type": "left", "eventId": event_id})]
    await _publish(kafka_bootstrap, topic, [*first[:20], *noise, *first[:5]], event_id.encode())
    base = f"http://127.0.0.1:{port}"
    process = await _start(env, tmp_path / "log.out")
    try:
        async with aiohttp.ClientSession() as session:
            await _head_size(session, base, event_id, 20, process, tmp_path / "log.out")
            await _stop(process)
            # Redelivered and new records while it was down: appended once, in order.
            await _publish(kafka_bootstrap, topic, first[15:], event_id.encode())
            process = await _start(env, tmp_path / "log.out")
            head = await _head_size(session, base, event_id, 30, process, tmp_path / "log.out")
            assert head["size"] == 30
            async with session.get(f"{base}/v1/log/{event_id}/entries?start=0&end=30") as answer:
                tickets = [entry["ticket"] for entry in (await answer.json())["entries"]]
            assert tickets == list(range(1, 31))
            async with session.get(f"{base}/v1/log/jwks.json") as answer:
                jwks = await answer.json()
            async with session.get(f"{base}/v1/log/{event_id}/receipt?leaf=29") as answer:
                receipt = await answer.json()
            assert verify_receipt(receipt, jwks).size == 30
    finally:
        await _stop(process)
