"""Queueing methods of the Tier-1 room (issue 19), and the two tiers agreeing on each.

The Tier-1 side runs the real handlers on moto; the Tier-2 side runs the queue's own scripts
on a private real Redis. For the same seed and the same arrivals, both admit in the same order.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import jwt
import pytest

from urr_common.clients import redis_client
from urr_common.fairness import QueueMethod, random_order
from urr_devstack.procs import RedisServer
from urr_devstack.testing import patient_redis
from urr_queue.config import EventConfig
from urr_queue.store import Admitted, QueueStore, Refusal, Waiting
from urr_vwr_lambda.advancer import _grant_random
from urr_vwr_lambda.queueing import CapacityFeed, arrival_alias

SEED = "3c" * 32


def open_room(vwr: Any, event_id: str, method: str, **extra: Any) -> Any:
    answer = vwr.admin(
        "PUT", event_id, {"isActive": True, "batchSize": 100, "queueMethod": method, **extra}
    )
    assert answer.status in (200, 201), answer.body
    return answer


def assign_many(vwr: Any, event_id: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        request_id = str(uuid.uuid4())
        assert vwr.assign(event_id, request_id).status == 201
        ids.append(request_id)
    return ids


def admitted_order_tier1(vwr: Any, event_id: str, ids: list[str], step: int) -> list[str]:
    """Advance ``step`` at a time; the order the passes are numbered in (the signed ``pos``)."""
    signed: dict[int, str] = {}
    for _ in range(len(ids) // step + 2):
        moved = vwr.admin("POST", f"{event_id}/advance", {"by": step})
        assert moved.status == 200, moved.body
        for request_id in ids:
            if request_id in signed.values():
                continue
            answer = vwr.check(event_id, request_id)
            assert answer.status == 200, answer.body
            if answer.body["admitted"]:
                claims = jwt.decode(answer.body["token"], options={"verify_signature": False})
                signed[claims["pos"]] = request_id
    assert len(signed) == len(ids)
    return [signed[number] for number in sorted(signed)]


def test_random_grants_in_the_seeds_order_and_numbers_passes_by_grant(vwr: Any) -> None:
    answer = open_room(vwr, "rnd-1", "random", orderSeed=SEED)
    assert answer.status == 201
    status = vwr.status("rnd-1").body
    assert status["queueMethod"] == "random"
    assert status["orderSeedCommitment"] == hashlib.sha256(bytes.fromhex(SEED)).hexdigest()
    ids = assign_many(vwr, "rnd-1", 12)
    waiting = vwr.check("rnd-1", ids[0]).body
    assert waiting["admitted"] is False
    assert waiting["ahead"] is None
    assert waiting["queueMethod"] == "random"
    order = admitted_order_tier1(vwr, "rnd-1", ids, step=5)
    # Drawn by the public alias of each request id (the id itself is the waiter's secret).
    by_alias = {arrival_alias(request_id): request_id for request_id in ids}
    assert order == [by_alias[a] for a in random_order(bytes.fromhex(SEED), list(by_alias))]
    assert order != ids
    assert vwr.status("rnd-1").body["servingCounter"] == 12


def test_random_gives_up_quiet_places_before_drawing(vwr: Any) -> None:
    open_room(vwr, "rnd-2", "random", orderSeed=SEED)
    ids = assign_many(vwr, "rnd-2", 4)
    vwr.clock.advance(vwr.settings.advancer.abandon_after_s + 5)
    for request_id in ids[:2]:  # these two keep checking; the others went away
        assert vwr.check("rnd-2", request_id).status == 200
    moved = vwr.admin("POST", "rnd-2/advance", {"by": 4}).body
    assert moved["admitted"] == 2
    assert moved["skippedAbandoned"] == 2
    for request_id in ids[:2]:
        assert vwr.check("rnd-2", request_id).body["admitted"] is True
    for request_id in ids[2:]:
        assert vwr.check("rnd-2", request_id).status == 410


def test_passthrough_lets_every_check_in(vwr: Any) -> None:
    open_room(vwr, "pass-1", "passthrough")
    request_id = assign_many(vwr, "pass-1", 1)[0]
    answer = vwr.check("pass-1", request_id)
    assert answer.body["admitted"] is True
    assert answer.body["token"]
    assert vwr.status("pass-1").body["queueMethod"] == "passthrough"
    assert vwr.admin("POST", "pass-1/advance", {"by": 5}).body["limitedBy"] == "passthrough"


def test_reject_is_409_for_assigns_and_waiting_checks(vwr: Any) -> None:
    open_room(vwr, "rej-1", "fifo")
    waiting = assign_many(vwr, "rej-1", 1)[0]
    open_room(vwr, "rej-1", "reject")
    refused = vwr.assign("rej-1")
    assert refused.status == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.body["code"] == "event_closed"
    assert vwr.check("rej-1", waiting).status == 409
    assert vwr.status("rej-1").body["queueMethod"] == "reject"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"queueMethod": "lottery"}, "validation_failed"),
        ({"queueMethod": 3}, "validation_failed"),
        ({"orderSeed": "abc"}, "validation_failed"),
        ({"orderSeed": "3C" * 32}, "validation_failed"),
    ],
)
def test_bad_methods_and_seeds_are_422_and_store_nothing(vwr: Any, body: Any, code: str) -> None:
    answer = vwr.admin("PUT", "bad-1", {"isActive": True, **body})
    assert answer.status == 422
    assert answer.body["code"] == code
    assert vwr.status("bad-1").status == 404


def test_the_seed_is_set_once_and_the_order_changes_only_on_an_empty_line(vwr: Any) -> None:
    open_room(vwr, "seed-1", "fifo", orderSeed=SEED)
    other = vwr.admin("PUT", "seed-1", {"isActive": True, "orderSeed": "4d" * 32})
    assert other.status == 422
    assert other.body["code"] == "order_seed_immutable"
    assert vwr.admin("PUT", "seed-1", {"isActive": True, "orderSeed": SEED}).status == 200
    assign_many(vwr, "seed-1", 1)
    switch = vwr.admin("PUT", "seed-1", {"isActive": True, "queueMethod": "random"})
    assert switch.status == 409
    assert switch.body["code"] == "line_not_empty"
    assert vwr.status("seed-1").body["queueMethod"] == "fifo"
    # passthrough and reject keep the line's order; after a reset random may start.
    assert open_room(vwr, "seed-1", "passthrough").status == 200
    assert vwr.admin("POST", "seed-1/reset").status == 200
    assert open_room(vwr, "seed-1", "random").status == 200
    commitment = hashlib.sha256(bytes.fromhex(SEED)).hexdigest()
    assert vwr.status("seed-1").body["orderSeedCommitment"] == commitment


def test_every_room_draws_its_own_seed(vwr: Any) -> None:
    open_room(vwr, "own-1", "random")
    open_room(vwr, "own-2", "random")
    first = vwr.status("own-1").body["orderSeedCommitment"]
    assert first != vwr.status("own-2").body["orderSeedCommitment"]


# -- the two tiers agree ---------------------------------------------------------------------


async def tier2_order(store: QueueStore, event_id: str, method: QueueMethod, ids: list[str]):
    """Enter ``ids`` in order, then admit one at a time; what each entry got, and the order."""
    config = EventConfig(capacity=1, admit_per_second=100_000, queue_method=method)
    assert await store.configure(event_id, config, seed=SEED) == "created"
    answers = [await store.visit(event_id, user, enter=True) for user in ids]
    order: list[str] = []
    for _ in range(20 * len(ids)):
        result = await store.tick(event_id, max_admit=10, max_scan=10, max_expire=10)
        assert result is not None
        for user, _number in result.admitted:
            order.append(user)
            await store.leave(event_id, user, only_admitted=False)
        if len(order) == len(ids):
            break
    return answers, order


@pytest.fixture
async def tier2_store(redis_server: RedisServer):
    redis_server.ensure_running()
    client = redis_client(patient_redis(redis_server.url))
    try:
        yield QueueStore(client, heartbeat_bucket_ms=500)
    finally:
        await client.aclose()


@pytest.mark.parametrize("method", list(QueueMethod))
async def test_both_tiers_agree_on_each_method(
    vwr: Any, tier2_store: QueueStore, method: QueueMethod
) -> None:
    event_id = f"agree-{method.value}-{uuid.uuid4().hex[:6]}"
    ids = [str(uuid.uuid4()) for _ in range(10)]
    # Tier 1 draws from the alias of each request id; the same arrival ids enter Tier 2.
    aliases = [arrival_alias(request_id) for request_id in ids]
    answers, tier2_aliases = await tier2_order(tier2_store, event_id, method, aliases)
    tier2 = [ids[aliases.index(alias)] for alias in tier2_aliases]
    open_room(vwr, event_id, method.value, orderSeed=SEED)
    if method is QueueMethod.REJECT:
        assert all(answer is Refusal.REJECTED for answer in answers)
        assert all(vwr.assign(event_id, rid).status == 409 for rid in ids)
        return
    if method is QueueMethod.PASSTHROUGH:
        assert all(isinstance(answer, Admitted) for answer in answers)
        for request_id in ids:
            assert vwr.assign(event_id, request_id).status == 201
            assert vwr.check(event_id, request_id).body["admitted"] is True
        return
    assert all(isinstance(answer, Waiting) for answer in answers)
    for request_id in ids:
        assert vwr.assign(event_id, request_id).status == 201
    tier1 = admitted_order_tier1(vwr, event_id, ids, step=3)
    assert tier1 == tier2
    drawn = random_order(bytes.fromhex(SEED), aliases)
    expected = ids if method is QueueMethod.FIFO else [ids[aliases.index(a)] for a in drawn]
    assert tier1 == expected


def test_a_random_cycle_on_a_stale_read_grants_nothing(vwr: Any) -> None:
    """Two advancers at once: the one whose read went stale loses the compare-and-set before
    writing any grant, so no place is granted twice and no number is handed out twice."""
    open_room(vwr, "race-1", "random", orderSeed=SEED)
    ids = assign_many(vwr, "race-1", 6)
    stale = vwr.runtime.store.get_event("race-1", consistent=True)
    assert vwr.admin("POST", "race-1/advance", {"by": 3}).body["admitted"] == 3
    feed = CapacityFeed(waiting=0, admitted=0, capacity=1000, admit_per_second=0.0)
    lost = _grant_random(vwr.runtime, stale, 3, 3, 0, feed, 2.0)
    assert lost.limited_by == "concurrent_update"
    assert lost.live == 0
    places = [vwr.runtime.store.get_place("race-1", rid) for rid in ids]
    seqs = [place.grant_seq for place in places if place is not None]
    assert sorted(seq for seq in seqs if seq is not None) == [1, 2, 3]
    assert vwr.status("race-1").body["servingCounter"] == 3
