"""Pre-queue publications in the admission log (issue 19), checked with urr-verify as a
stranger would: only the published document goes into the verifier.

The large test runs the whole path: 5,000 arrivals enter a real Tier-2 pre-queue (Redis), the
reveal shuffles the roster, the queue's records go through real Kafka to the log service
(``python -m urr_admission_log``), and ``urr-verify shuffle`` on ``/v1/log/{e}/prequeue``
reproduces the order in which the queue then admits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from urr_admission_log.app import IMMUTABLE
from urr_admission_log.consumer import LogMetrics, prequeue_records, store_prequeues
from urr_common.clients import redis_client
from urr_common.settings import RedisSettings
from urr_devstack.procs import RedisServer, free_port
from urr_devstack.testing import admission_log_env, wait_process_listening
from urr_queue import prequeue as queue_prequeue
from urr_queue.config import EventConfig
from urr_queue.store import QueueStore, Rostered
from urr_verify.__main__ import main as verify_main
from urr_verify.merkle import leaf_hash, verify_inclusion
from urr_verify.shuffle import commitment, roster_root, shuffle_seed, shuffled

pytestmark = pytest.mark.integration
SECRET = b"the operator's secret, 32 bytes!"
COMMITMENT = commitment(SECRET).hex()
EVENT = "pre-1"


def _verify_shuffle(document: dict[str, Any], tmp_path: Path) -> list[str]:
    """``urr-verify shuffle`` on the document exactly as published; the order it prints."""
    path = tmp_path / f"roster-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(document))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert verify_main(["shuffle", str(path)]) == 0
    order: list[str] = json.loads(out.getvalue())["order"]
    return order


def _records(members: list[str], *, secret: bytes = SECRET) -> list[dict[str, Any]]:
    root = roster_root([bytes.fromhex(m) for m in members]).hex()
    times = {"prequeueStart": "2026-12-06T09:00:00+00:00", "saleStart": "2026-12-06T10:00:00+00:00"}
    common = {"eventId": EVENT, "commitment": COMMITMENT, **times}
    return [
        {"id": "c", "type": "prequeue_committed", **common},
        *(
            {
                "id": f"r{start}",
                "type": "prequeue_roster",
                "eventId": EVENT,
                "start": start,
                "members": members[start : start + 3],
            }
            for start in range(0, len(members), 3)
        ),
        {
            "id": "v",
            "type": "prequeue_revealed",
            **common,
            "secret": secret.hex(),
            "root": root,
            "size": len(members),
        },
    ]


async def _feed(log: dict[str, Any], records: list[dict[str, Any]]) -> None:
    values = [orjson.dumps(record) for record in records]
    await store_prequeues(log["pool"], prequeue_records(values), LogMetrics(CollectorRegistry()))


async def test_the_published_roster_verifies_and_proves_membership(
    log: dict[str, Any], tmp_path: Path
) -> None:
    client = log["client"]
    assert (await client.get(f"/v1/log/{EVENT}/prequeue")).status == 404
    members = [hashlib.sha1(f"m{i}".encode()).hexdigest() for i in range(11)]  # noqa: S324
    records = _records(members)
    await _feed(log, records[:1])
    before = await client.get(f"/v1/log/{EVENT}/prequeue")
    assert before.status == 200
    body = await before.json()
    assert body == {
        "eventId": EVENT,
        "commitment": COMMITMENT,
        "prequeueStart": records[0]["prequeueStart"],
        "saleStart": records[0]["saleStart"],
        "revealed": False,
    }
    assert before.headers["Cache-Control"] != IMMUTABLE
    # The reveal before the last chunk: published, but not complete (not immutable).
    await _feed(log, [*records[1:3], records[-1]])
    partial = await (await client.get(f"/v1/log/{EVENT}/prequeue")).json()
    assert partial["revealed"] is True
    assert "members" not in partial
    # Everything, twice over, with junk and a forged second reveal: stored once, unchanged.
    forged = {**records[-1], "id": "v2", "secret": "00" * 32}
    junk = {"type": "prequeue_roster", "eventId": EVENT, "start": 0, "members": ["zz"]}
    await _feed(log, [*records, *records, forged, junk])
    answer = await client.get(f"/v1/log/{EVENT}/prequeue")
    assert answer.headers["Cache-Control"] == IMMUTABLE
    document = await answer.json()
    assert document["members"] == members
    assert document["secret"] == SECRET.hex()
    order = _verify_shuffle(document, tmp_path)
    root = bytes.fromhex(document["root"])
    expected = shuffled([bytes.fromhex(m) for m in members], shuffle_seed(SECRET, root))
    assert order == [member.hex() for member in expected]

    proof = await (await client.get(f"/v1/log/{EVENT}/prequeue/proof?member={members[7]}")).json()
    assert proof["leafIndex"] == 7
    verify_inclusion(
        leaf_hash(bytes.fromhex(members[7])),
        7,
        len(members),
        [bytes.fromhex(item) for item in proof["proof"]],
        root,
    )
    stranger = await client.get(f"/v1/log/{EVENT}/prequeue/proof?member={'ab' * 20}")
    assert stranger.status == 404
    assert (await client.get(f"/v1/log/{EVENT}/prequeue/proof?member=xyz")).status == 400


async def test_a_wrong_secret_is_published_as_sent_and_the_verifier_refuses_it(
    log: dict[str, Any], tmp_path: Path
) -> None:
    members = [hashlib.sha1(f"w{i}".encode()).hexdigest() for i in range(5)]  # noqa: S324
    await _feed(log, _records(members, secret=b"not the committed secret"))
    document = await (await log["client"].get(f"/v1/log/{EVENT}/prequeue")).json()
    path = tmp_path / "roster.json"
    path.write_text(json.dumps(document))
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        assert verify_main(["shuffle", str(path)]) == 1


# -- the whole path, 5,000 arrivals ------------------------------------------------------------

CROWD = 5000


@pytest.fixture
async def queue_store(redis_server: RedisServer) -> AsyncIterator[QueueStore]:
    redis_server.ensure_running()
    # The crowd joins in bursts of 200 visits, up to 64 new connections at once; on a loaded CI
    # host that took longer than the production 0.5 s connect timeout (a failed run: "Timeout
    # connecting to server"). The test judges the shuffle, not the connect time.
    patient = RedisSettings(url=redis_server.url, connect_timeout_s=5.0, socket_timeout_s=5.0)
    client = redis_client(patient)
    try:
        yield QueueStore(client, heartbeat_bucket_ms=5000, max_in_flight=64)
    finally:
        await client.aclose()


async def _join_crowd(queue: QueueStore, event_id: str, users: list[str]) -> dict[str, str]:
    member_of: dict[str, str] = {}
    for start in range(0, len(users), 200):
        part = users[start : start + 200]
        answers = await asyncio.gather(*(queue.visit(event_id, u, enter=True) for u in part))
        for user, answer in zip(part, answers, strict=True):
            assert isinstance(answer, Rostered), answer
            member_of[user] = answer.member_id
    return member_of


#: Seconds from the pre-queue's opening to sale start. A window sized from a timed pilot
#: (three times its pace) failed on a loaded CI host: three test workers on two cores slowed
#: the crowd's joining five-fold after the pilot, and the sale started with 1,063 joined. A
#: fixed window the crowd always fits in costs this test ~15 s more on an idle host.
PREQUEUE_WINDOW_S = 30.0


async def _admitted_order(queue: QueueStore, event_id: str, want: int) -> list[str]:
    order: list[str] = []
    for _ in range(200):
        result = await queue.tick(event_id, max_admit=1000, max_scan=1000, max_expire=1000)
        assert result is not None
        order += [user for user, _ in result.admitted]
        if len(order) >= want:
            break
        await asyncio.sleep(0.02)
    return order


async def _start_log(env: dict[str, str], out: Path) -> asyncio.subprocess.Process:
    with out.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urr_admission_log", env=env, stdout=sink, stderr=sink
        )


async def _published(base: str, event_id: str, process: asyncio.subprocess.Process) -> Any:
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"the log exited with {process.returncode}")
            try:
                async with session.get(f"{base}/v1/log/{event_id}/prequeue") as answer:
                    if answer.status == 200:
                        body = await answer.json()
                        if "members" in body:
                            return body
            except aiohttp.ClientConnectionError:
                pass  # still starting
            await asyncio.sleep(0.3)


# The pre-queue window (up to 30 s on a loaded host), then a Python service's start-up on a
# starved host (see START_UP_S) and a consumer-group join: over the suite's 60 s in a loaded
# run, all correct.
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_5000_crowd_is_shuffled_as_urr_verify_recomputes_from_the_log(
    queue_store: QueueStore, postgres_dsn: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    event_id = f"crowd-{uuid.uuid4().hex[:8]}"
    window_s = PREQUEUE_WINDOW_S
    now = datetime.now(UTC)
    config = EventConfig(
        capacity=CROWD + 10,
        admit_per_second=100_000,
        idle_timeout_seconds=600,
        prequeue_start=now - timedelta(seconds=1),
        sale_start=now + timedelta(seconds=window_s),
        prequeue_commitment=COMMITMENT,
    )
    assert await queue_store.configure(event_id, config, prequeue_salt=os.urandom(32).hex())
    users = [str(uuid.uuid4()) for _ in range(CROWD)]
    member_of = await _join_crowd(queue_store, event_id, users)
    joined_in = (datetime.now(UTC) - now).total_seconds()
    assert joined_in < window_s, f"the crowd took {joined_in:.1f} s to join ({window_s:.1f} s)"
    await asyncio.sleep(max(0.0, window_s - joined_in + 0.2))
    document = await queue_prequeue.reveal(queue_store, event_id, config, SECRET)
    records = [
        queue_prequeue.committed_record(event_id, config),
        *queue_prequeue.published_records(event_id, document),
    ]

    topic = f"queue-events-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(topic, orjson.dumps(record), key=event_id.encode())
    finally:
        await producer.stop()
    port = free_port()
    env = admission_log_env(port, postgres_dsn, kafka_bootstrap, topic, tmp_path)
    process = await _start_log(env, tmp_path / "log.out")
    try:
        await wait_process_listening(port, process, tmp_path / "log.out")
        published = await _published(f"http://127.0.0.1:{port}", event_id, process)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()
    assert published["size"] == CROWD
    order = _verify_shuffle(published, tmp_path)

    user_of = {member: user for user, member in member_of.items()}
    admitted = await _admitted_order(queue_store, event_id, CROWD)
    assert admitted == [user_of[member] for member in order]
    assert admitted != users
