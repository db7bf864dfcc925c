"""The random method's seed in public (issue 19): committed when the event uses the method,
revealed only once the line is over, then checked end to end by ``urr-verify`` from the
public log API alone.

The end-to-end test runs the real path: a few hundred arrivals enter this queue over HTTP
(real Redis) while the admission loop admits by key, the queue's records go through real
Kafka to the admission log service (``python -m urr_admission_log`` on real PostgreSQL), and
``urr-verify audit --seed`` reads only ``/v1/log/{e}/entries`` and ``/v1/log/{e}/order-seed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from urr_common.settings import KafkaSettings
from urr_devstack.procs import free_port
from urr_devstack.testing import admission_log_env
from urr_queue.app import ADMISSION_LOOP
from urr_queue.settings import AdmissionSettings, QueueEventsSettings
from urr_verify.__main__ import main as verify_main

SEED = "3c" * 32
COMMITMENT = hashlib.sha256(bytes.fromhex(SEED)).hexdigest()
ADMIN = "/api/v1/admin/queue/"


async def _reveal(client: Any, headers: dict[str, str], event: str) -> Any:
    return await client.post(f"{ADMIN}{event}/order-seed/reveal", headers=headers)


async def test_the_seed_is_revealed_only_once_the_line_is_over(
    single_redis, queue_client, as_user, admin_headers
):
    client = await queue_client(single_redis)
    event = "seed-rule"
    created = await client.put(
        f"{ADMIN}{event}",
        json={
            "capacity": 100,
            "admit_per_second": 1000,
            "queue_method": "random",
            "order_seed": SEED,
        },
        headers=admin_headers,
    )
    assert created.status == 201, await created.text()
    assert (await created.json())["order_seed_revealed"] is False
    for user in ("u1", "u2", "u3"):
        assert (
            await client.post(f"/api/v1/queue/{event}/enter", headers=as_user(user))
        ).status == 201

    # Open, people waiting: too early, and nothing changes.
    early = await _reveal(client, admin_headers, event)
    assert early.status == 409
    assert early.headers["Content-Type"].startswith("application/problem+json")
    problem = await early.json()
    assert problem["code"] == "seed_reveal_too_early"
    assert (problem["mode"], problem["waiting"]) == ("queue", 3)
    assert "order_seed" not in json.dumps(problem).replace("order_seed_", "")
    # Closed, but people still wait: still too early.
    closing = await client.patch(f"{ADMIN}{event}", json={"mode": "closed"}, headers=admin_headers)
    assert closing.status == 200
    still = await _reveal(client, admin_headers, event)
    assert (still.status, (await still.json())["waiting"]) == (409, 3)
    # A buyer cannot reveal it.
    assert (await _reveal(client, as_user("u1"), event)).status in (401, 403)

    await asyncio.sleep(0.02)
    await client.app[ADMISSION_LOOP].tick_all()  # the closed event still admits its line
    revealed = await _reveal(client, admin_headers, event)
    assert revealed.status == 200, await revealed.text()
    body = await revealed.json()
    assert (body["order_seed"], body["order_seed_commitment"]) == (SEED, COMMITMENT)
    assert (await _reveal(client, admin_headers, event)).status == 200  # again: the same
    view = await client.get(f"{ADMIN}{event}", headers=admin_headers)
    assert (await view.json())["order_seed_revealed"] is True

    # The seed is public now: the event never queues by it again...
    reopen = await client.patch(f"{ADMIN}{event}", json={"mode": "queue"}, headers=admin_headers)
    assert reopen.status == 409
    assert (await reopen.json())["code"] == "order_seed_revealed"
    # ...but may open in arrival order.
    fifo = await client.patch(
        f"{ADMIN}{event}", json={"mode": "queue", "queue_method": "fifo"}, headers=admin_headers
    )
    assert fifo.status == 200, await fifo.text()
    back = await client.patch(
        f"{ADMIN}{event}", json={"queue_method": "random"}, headers=admin_headers
    )
    assert (back.status, (await back.json())["code"]) == (409, "order_seed_revealed")
    missing = await _reveal(client, admin_headers, "no-such-event")
    assert missing.status == 404


async def test_straight_in_says_the_number_its_receipt_is_found_by(
    single_redis, queue_client, as_user, admin_headers
):
    client = await queue_client(single_redis)
    event = "straight-in"
    created = await client.put(
        f"{ADMIN}{event}", json={"queue_method": "passthrough"}, headers=admin_headers
    )
    assert created.status == 201
    first = await client.post(f"/api/v1/queue/{event}/enter", headers=as_user("a"))
    second = await client.post(f"/api/v1/queue/{event}/enter", headers=as_user("b"))
    assert [(await r.json())["queue_number"] for r in (first, second)] == [1, 2]
    again = await client.get(f"/api/v1/queue/{event}/status", headers=as_user("a"))
    assert "queue_number" not in await again.json()  # known only to the call that let it in


# -- end to end ---------------------------------------------------------------------------

ARRIVALS = 300


async def _start_log(env: dict[str, str], out: Path) -> asyncio.subprocess.Process:
    with out.open("ab") as sink:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urr_admission_log", env=env, stdout=sink, stderr=sink
        )


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as answer:
        return answer.status, await answer.json(content_type=None)


async def _published_log(
    base: str, event: str, process: asyncio.subprocess.Process, size: int, *, ticket: int
) -> tuple[list[Any], Any, Any]:
    """Wait for a signed head over ``size`` leaves and the revealed seed; then read both."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(90):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"the log exited with {process.returncode}")
            try:
                status, head = await _get_json(session, f"{base}/v1/log/{event}/sth")
                seed_status, seed = await _get_json(session, f"{base}/v1/log/{event}/order-seed")
                grown = status == 200 and head["size"] >= size
                if grown and seed_status == 200 and seed["revealed"]:
                    break
            except aiohttp.ClientConnectionError:
                pass  # still starting
            await asyncio.sleep(0.3)
        entries: list[Any] = []
        while len(entries) < head["size"]:
            start = len(entries)
            end = min(head["size"], start + 1000)
            status, page = await _get_json(
                session, f"{base}/v1/log/{event}/entries?start={start}&end={end}"
            )
            assert status == 200, page
            entries += page["entries"]
        _, jwks = await _get_json(session, f"{base}/v1/log/jwks.json")
        _, receipt = await _get_json(session, f"{base}/v1/log/{event}/receipt?ticket={ticket}")
        return entries, seed, {"jwks": jwks, "receipt": receipt}


def _verify(*argv: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = verify_main(list(argv))
    return code, out.getvalue() + err.getvalue()


async def _create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _commitment_published(base: str, event: str, process: asyncio.subprocess.Process) -> Any:
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            if process.returncode is not None:
                raise AssertionError(f"the log exited with {process.returncode}")
            try:
                status, body = await _get_json(session, f"{base}/v1/log/{event}/order-seed")
                if status == 200:
                    return body
            except aiohttp.ClientConnectionError:
                pass  # still starting
            await asyncio.sleep(0.3)


@pytest.mark.integration
async def test_a_random_event_audits_from_public_data_only(
    kafka_bootstrap, postgres_dsn, single_redis, queue_client, as_user, admin_headers, tmp_path
):
    topic = f"queue-events-{uuid.uuid4().hex[:8]}"
    event = f"lottery-{uuid.uuid4().hex[:6]}"
    await _create_topic(kafka_bootstrap, topic)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = admission_log_env(port, postgres_dsn, kafka_bootstrap, topic, tmp_path, sign_every_s=0.5)
    process = await _start_log(env, tmp_path / "log.out")
    try:
        client = await queue_client(
            single_redis,
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
            queue_events=QueueEventsSettings(topic=topic),
            admission=AdmissionSettings(enabled=False, max_admit_per_tick=9),
        )
        created = await client.put(
            f"{ADMIN}{event}",
            json={
                "capacity": ARRIVALS,
                "admit_per_second": 100_000,
                "queue_method": "random",
                "order_seed": SEED,
            },
            headers=admin_headers,
        )
        assert created.status == 201, await created.text()
        # The commitment is public before anyone queues; the seed is not.
        committed = await _commitment_published(base, event, process)
        assert (committed["commitment"], committed["revealed"]) == (COMMITMENT, False)
        assert "seed" not in committed
        # Arrivals in waves of 20 with a tick of at most 9 admissions between: a line that
        # grows, so later arrivals with small keys overtake earlier ones still waiting.
        users = [f"buyer-{uuid.uuid4().hex[:10]}" for _ in range(ARRIVALS)]
        loop = client.app[ADMISSION_LOOP]
        numbers: dict[str, int] = {}
        for start in range(0, ARRIVALS, 20):
            for user in users[start : start + 20]:
                answer = await client.post(f"/api/v1/queue/{event}/enter", headers=as_user(user))
                assert answer.status == 201
                numbers[user] = (await answer.json())["queue_number"]
            await asyncio.sleep(0.005)
            await loop.tick_all()
        closed = await client.patch(
            f"{ADMIN}{event}", json={"mode": "closed"}, headers=admin_headers
        )
        assert closed.status == 200
        for _ in range(100):
            await asyncio.sleep(0.005)
            await loop.tick_all()
            if (await _reveal(client, admin_headers, event)).status == 200:
                break
        else:
            raise AssertionError("the line never emptied")
        # The buyer looked at: the one who arrived 18th; their receipt by their queue_number.
        buyer = users[17]
        entries, seed_document, extra = await _published_log(
            base, event, process, ARRIVALS, ticket=numbers[buyer]
        )
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()

    assert len(entries) == ARRIVALS
    assert seed_document["commitment"] == COMMITMENT
    assert seed_document["seed"] == SEED
    assert seed_document["committedAt"] == committed["committedAt"]
    assert seed_document["committedAt"] < seed_document["revealedAt"]
    tickets = [entry["ticket"] for entry in entries]
    assert tickets != sorted(tickets), "a random line should not admit in arrival order"
    assert all(isinstance(entry["key"], int) for entry in entries)

    # The stranger's audit: the published entries and seed document, nothing else.
    (tmp_path / "entries.json").write_text(json.dumps({"entries": entries}))
    (tmp_path / "seed.json").write_text(json.dumps(seed_document))
    code, said = _verify(
        "audit", str(tmp_path / "entries.json"), "--seed", str(tmp_path / "seed.json")
    )
    assert code == 0, said
    assert f"admitted {ARRIVALS}" in said
    assert "unexplained 0" in said

    # A tampered seed fails, naming why.
    forged = {**seed_document, "seed": "00" * 32}
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    code, said = _verify(
        "audit", str(tmp_path / "entries.json"), "--seed", str(tmp_path / "forged.json")
    )
    assert code == 1
    assert "does not hash to the commitment" in said

    # A buyer checks their receipt and that their own key is the seed's.
    receipt = extra["receipt"]
    (tmp_path / "receipt.json").write_text(json.dumps(receipt))
    (tmp_path / "jwks.json").write_text(json.dumps(extra["jwks"]))
    assert receipt["leaf"]["ticket"] == numbers[buyer]
    holder = buyer
    args = ["receipt", str(tmp_path / "receipt.json"), "--jwks", str(tmp_path / "jwks.json")]
    code, said = _verify(*args, "--seed", str(tmp_path / "seed.json"), "--arrival-id", holder)
    assert code == 0, said
    code, said = _verify(
        *args, "--seed", str(tmp_path / "seed.json"), "--arrival-id", users[0] + "x"
    )
    assert code == 1
    assert "not the one the seed gives" in said
