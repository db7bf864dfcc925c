"""The scheduled pre-queue of Tier 2 over HTTP: roster, freeze, reveal, shuffle (issue 19).

The order the queue admits is checked against ``urr-verify shuffle`` run on the document the
reveal publishes, so the service's shuffle and the verifier's are held to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from urr_queue import prequeue
from urr_queue.app import ADMISSION_LOOP
from urr_queue.config import EventConfig
from urr_queue.store import Refusal, Rostered, Waiting
from urr_verify.__main__ import main as verify_main

SECRET = bytes(range(32))
COMMITMENT = hashlib.sha256(SECRET).hexdigest()
ADMIN = "/api/v1/admin/queue/"


def _at(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def _put(client: Any, headers: dict[str, str], event: str, **fields: Any) -> Any:
    return await client.put(f"{ADMIN}{event}", json=fields, headers=headers)


async def _admit_all(client: Any, want: int) -> list[tuple[str, int]]:
    admitted: list[tuple[str, int]] = []
    for _ in range(50 * want):
        for result in await client.app[ADMISSION_LOOP].tick_all():
            admitted += result.admitted
        if len(admitted) >= want:
            return admitted
        await asyncio.sleep(0.005)
    return admitted


async def test_the_roster_is_shuffled_as_urr_verify_recomputes_it(
    single_redis, queue_client, as_user, admin_headers, tmp_path: Path
) -> None:
    client = await queue_client(single_redis)
    sale_in = 4.0
    created = await _put(
        client,
        admin_headers,
        "pre-1",
        capacity=1000,
        admit_per_second=100_000,
        prequeue_start=_at(-1),
        sale_start=_at(sale_in),
        prequeue_commitment=COMMITMENT,
    )
    assert created.status == 201, await created.text()
    users = [f"fan-{index:03d}" for index in range(40)]
    member_of: dict[str, str] = {}
    for user in users:
        answer = await client.post("/api/v1/queue/pre-1/enter", headers=as_user(user))
        assert answer.status == 201, await answer.text()
        body = await answer.json()
        assert body["status"] == "prequeue"
        assert body["prequeue_commitment"] == COMMITMENT
        member_of[user] = body["member_id"]
    assert len(set(member_of.values())) == len(users)
    assert all(user not in member for user, member in member_of.items())  # hashed, salted
    again = await client.get("/api/v1/queue/pre-1/status", headers=as_user(users[0]))
    assert (await again.json())["member_id"] == member_of[users[0]]
    # Nobody is admitted before the reveal, and the reveal waits for the sale to start.
    assert not any(result.admitted for result in await client.app[ADMISSION_LOOP].tick_all())
    early = await client.post(
        f"{ADMIN}pre-1/prequeue/reveal", json={"secret": SECRET.hex()}, headers=admin_headers
    )
    assert early.status == 409
    assert (await early.json())["code"] == "sale_not_started"
    await asyncio.sleep(sale_in + 0.2)
    late = await client.post("/api/v1/queue/pre-1/enter", headers=as_user("late-fan"))
    late_body = await late.json()
    assert late_body["status"] == "waiting"
    assert late_body["position"] == len(users) + 1  # behind the whole roster
    wrong = await client.post(
        f"{ADMIN}pre-1/prequeue/reveal", json={"secret": "00" * 32}, headers=admin_headers
    )
    assert wrong.status == 422
    assert (await wrong.json())["code"] == "secret_mismatch"
    assert not any(result.admitted for result in await client.app[ADMISSION_LOOP].tick_all())

    revealed = await client.post(
        f"{ADMIN}pre-1/prequeue/reveal", json={"secret": SECRET.hex()}, headers=admin_headers
    )
    assert revealed.status == 200, await revealed.text()
    document = await revealed.json()
    assert document["members"] == [member_of[user] for user in users]  # join order
    published = {key: document[key] for key in ("members", "root", "commitment", "secret")}
    path = tmp_path / "roster.json"
    path.write_text(json.dumps(published))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert verify_main(["shuffle", str(path)]) == 0
    order = json.loads(out.getvalue())["order"]
    assert order == document["order"]
    assert order != document["members"]

    admitted = await _admit_all(client, len(users) + 1)
    user_of = {member: user for user, member in member_of.items()}
    assert [user for user, _ in admitted] == [user_of[m] for m in order] + ["late-fan"]
    # Roster members are admitted as their rank (what the log is audited against).
    assert [number for _, number in admitted[: len(users)]] == list(range(1, len(users) + 1))
    # A repeated reveal answers the same document and places nobody again.
    repeat = await client.post(
        f"{ADMIN}pre-1/prequeue/reveal", json={"secret": SECRET.hex()}, headers=admin_headers
    )
    assert (await repeat.json())["order"] == order


async def test_bad_pre_queues_are_422_and_store_nothing(
    single_redis, queue_client, as_user, admin_headers
) -> None:
    client = await queue_client(single_redis)
    good = {"prequeue_start": _at(60), "sale_start": _at(120), "prequeue_commitment": COMMITMENT}
    bad_bodies: list[dict[str, Any]] = [
        {**good, "prequeue_commitment": "abc"},
        {**good, "prequeue_commitment": COMMITMENT.upper()},
        {**good, "sale_start": _at(30)},
        {**good, "sale_start": good["prequeue_start"]},
        {"prequeue_start": good["prequeue_start"], "sale_start": good["sale_start"]},
        {**good, "queue_method": "random"},
        {**good, "prequeue_start": "tomorrow"},
    ]
    for body in bad_bodies:
        answer = await _put(client, admin_headers, "pre-bad", **body)
        assert answer.status == 422, body
        assert answer.content_type == "application/problem+json"
        missing = await client.get(f"{ADMIN}pre-bad", headers=admin_headers)
        assert missing.status == 404, body

    assert (await _put(client, admin_headers, "pre-bad", **good)).status == 201
    assert (await _put(client, admin_headers, "pre-bad", **good)).status == 200  # same again
    for change in (
        {"prequeue_commitment": "ab" * 32},
        {"sale_start": _at(500)},
        {"queue_method": "random"},
    ):
        refused = await _put(client, admin_headers, "pre-bad", **change)
        assert refused.status == 422, change
    view = await (await client.get(f"{ADMIN}pre-bad", headers=admin_headers)).json()
    assert view["config"]["prequeue_commitment"] == COMMITMENT
    assert view["config"]["queue_method"] == "fifo"

    # Before the pre-queue opens nobody joins, and there is nothing to reveal yet.
    early = await client.post("/api/v1/queue/pre-bad/enter", headers=as_user("keen"))
    assert early.status == 409
    assert (await early.json())["code"] == "prequeue_not_open"
    reveal = await client.post(
        f"{ADMIN}pre-bad/prequeue/reveal", json={"secret": SECRET.hex()}, headers=admin_headers
    )
    assert reveal.status == 409
    assert (await reveal.json())["code"] == "sale_not_started"
    odd = await client.post(
        f"{ADMIN}pre-bad/prequeue/reveal", json={"secret": "xyz"}, headers=admin_headers
    )
    assert odd.status == 422


async def test_behind_a_tier1_room_the_order_hold_reads_past_the_roster(
    store_on, tmp_path: Path
) -> None:
    """The roster goes first whatever the Tier-1 numbers; then a missing number holds the
    later arrivals for the grace and is waived as the score the admissions carry."""
    store = store_on
    now_ms = await store.redis_now_ms()
    sale_ms = now_ms + 1500
    config = EventConfig(
        require_tier1_token=True,
        capacity=100,
        admit_per_second=100_000,
        prequeue_start=datetime.fromtimestamp((now_ms - 1000) / 1000, tz=UTC),
        sale_start=datetime.fromtimestamp(sale_ms / 1000, tz=UTC),
        prequeue_commitment=COMMITMENT,
    )
    assert await store.configure("pq-t1", config, seed="ab" * 32, prequeue_salt="cd" * 32) == (
        "created"
    )
    signed_s = now_ms // 1000

    async def enter(user: str, number: int, *, prequeue: bool) -> object:
        return await store.visit(
            "pq-t1",
            user,
            enter=True,
            tier1_position=number,
            tier1_place=f"rid-{user}#{number}",
            tier1_prequeue_sale_ms=sale_ms if prequeue else None,
            tier1_issued_at=signed_s,
        )

    # Pre-queue passes numbered high, one numbered pass too early: refused, nothing kept.
    assert await enter("early", 1, prequeue=False) is Refusal.TIER1_PASS_MISMATCH
    for user, number in (("r-a", 9), ("r-b", 7), ("r-c", 8)):
        assert isinstance(await enter(user, number, prequeue=True), Rostered)
    wrong_sale = await store.visit(
        "pq-t1",
        "r-d",
        enter=True,
        tier1_position=10,
        tier1_place="rid-r-d#10",
        tier1_prequeue_sale_ms=sale_ms + 1,
        tier1_issued_at=signed_s,
    )
    assert wrong_sale is Refusal.TIER1_PASS_MISMATCH
    await asyncio.sleep(max(0, sale_ms - await store.redis_now_ms()) / 1000 + 0.1)
    for user, number in (("n-1", 1), ("n-2", 2), ("n-4", 4)):  # 3 was released, never came
        assert isinstance(await enter(user, number, prequeue=False), Waiting)
    document = await prequeue.reveal(store, "pq-t1", config, SECRET)
    size = orjson.loads(document)["size"]
    assert size == 3

    admitted: list[tuple[str, int]] = []
    leaves: list[dict[str, Any]] = []
    held = waived = False
    waived_numbers: tuple[int, ...] = ()
    for _ in range(400):
        result = await store.tick(
            "pq-t1", max_admit=10, max_scan=10, max_expire=10, order_grace_ms=300
        )
        assert result is not None
        # As the admission log records a tick: its waivers, then its admissions.
        leaves += [{"kind": "waive", "ticket": n} for n in result.waived_numbers]
        leaves += [{"kind": "admit", "ticket": number} for _, number in result.admitted]
        admitted += result.admitted
        held = held or result.order_held
        if result.order_waived:
            waived, waived_numbers = True, result.waived_numbers
        if len(admitted) == 6:
            break
        await asyncio.sleep(0.01)
    roster = {orjson.loads(document)["members"][i]: user for i, user in enumerate("abc")}
    shuffled = [f"r-{roster[member]}" for member in orjson.loads(document)["order"]]
    assert [user for user, _ in admitted[:3]] == shuffled
    assert [number for _, number in admitted[:3]] == [1, 2, 3]  # the ranks
    assert [user for user, _ in admitted[3:]] == ["n-1", "n-2", "n-4"]
    after_roster = 2**40
    assert [number for _, number in admitted[3:]] == [after_roster + n for n in (1, 2, 4)]
    assert held
    assert waived
    assert waived_numbers == (after_roster + 3,)
    # urr-verify's audit reads the tickets as they are: ranks, then the later numbers.
    path = tmp_path / "leaves.json"
    path.write_text(json.dumps(leaves))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert verify_main(["audit", str(path)]) == 0
    assert "admitted 6, waived 1" in out.getvalue()
