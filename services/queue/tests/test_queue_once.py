"""One admission per Tier-1 place (issue 15, attack 1), on one Redis and on a Redis Cluster.

The attack: a user admitted early (Tier-1 number 1) finishes or leaves and enters Tier 2
again with the same ``urr-vwr-token``; before this rule the pass put them back at number 1,
ahead of everyone waiting. Now the place is spent when the stay it admitted ends, whatever
ended it, and the pass is refused (``403 tier1_pass_spent``); a new place is at the back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from urr_common.clients import redis_client
from urr_common.settings import RedisSettings
from urr_common.tokens import TokenSigner
from urr_queue.app import ADMISSION_LOOP
from urr_queue.config import EventConfig
from urr_queue.settings import AdmissionSettings
from urr_queue.store import Admitted, QueueStore, Refusal, Waiting
from urr_queue.tier1 import parse_place_key, place_key

EVENT = "once-1"
TICK = {"max_admit": 2_000, "max_scan": 5_000, "max_expire": 2_000}
FANS = [f"fan-{n}" for n in range(2, 7)]


def pass_for(signer: TokenSigner, rid: str, position: int, **extra: Any) -> str:
    return signer.sign(rid, {"evt": EVENT, "rid": rid, "pos": position, **extra})


async def admitted_in_order(client: Any) -> list[str]:
    result = (await client.app[ADMISSION_LOOP].tick_all())[0]
    return [user for user, _ in result.admitted]


async def test_a_spent_pass_buys_no_second_admission_and_the_fans_go_first(
    redis_settings: RedisSettings,
    queue_client: Any,
    internal_of: Any,
    as_user: Any,
    admin_headers: Any,
    tier1_signer: TokenSigner,
):
    """Capacity 1, five fans waiting: the early user gets in once, then goes to the back."""
    client = await queue_client(
        redis_settings, admission=AdmissionSettings(enabled=False, tier1_order_grace_s=0)
    )
    internal = await internal_of(client)
    body = {"capacity": 1, "admit_per_second": 1000, "require_tier1_token": True}
    created = await client.put(f"/api/v1/admin/queue/{EVENT}", json=body, headers=admin_headers)
    assert created.status == 201
    await asyncio.sleep(0.02)  # the rate bucket starts empty
    early_pass = pass_for(tier1_signer, "rid-early", 1)  # anonymous: no uid claim

    async def enter(user: str, token: str) -> Any:
        return await client.post(
            f"/api/v1/queue/{EVENT}/enter",
            headers=as_user(user),
            cookies={"urr-vwr-token": token},
        )

    assert (await enter("early", early_pass)).status == 201
    for position, fan in enumerate(FANS, start=2):
        assert (await enter(fan, pass_for(tier1_signer, f"rid-{fan}", position))).status == 201
    order = await admitted_in_order(client)
    assert order == ["early"]
    # Each round the one admitted user's stay ends (leave, then completed bookings) and the
    # early user tries the old pass again: refused every time, never ahead of a fan.
    ends = ["leave"] + ["complete"] * len(FANS)
    current, came_back = "early", False
    for end in ends:
        if end == "leave":
            left = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user(current))
            assert (await left.json())["was"] == "admitted"
        else:
            done = await internal.post(
                f"/internal/v1/queue/{EVENT}/complete", json={"userId": current}
            )
            assert (await done.json())["released"] is True
        again = await enter("early", early_pass)
        if not came_back:
            assert again.status == 403, await again.text()
            problem = await again.json()
            assert problem["code"] == "tier1_pass_spent"
            assert problem["redirect_to"] == f"/vwr/{EVENT}"
        else:
            # Already back in line with a new place: the old pass only shows that place.
            assert again.status == 200
            assert (await again.json())["queue_size"] == (await again.json())["position"]
        if current == FANS[1]:
            came_back = True
            # Coming back: a new Tier-1 place, at the back of the line (behind fans 4-6).
            fresh = await enter("early", pass_for(tier1_signer, "rid-early-2", 7))
            assert fresh.status == 201
            assert (await fresh.json())["position"] == 4
        admitted = await admitted_in_order(client)
        order += admitted
        if not admitted:
            break
        current = admitted[0]
    assert order == ["early", *FANS, "early"]
    # The same refusal on the status route's neighbour: the spent pass never re-enters later.
    assert (await enter("early", early_pass)).status == 200  # admitted with the new place
    refused = await enter("thief", early_pass)
    assert (await refused.json())["code"] == "tier1_pass_bound"


async def open_event(store: QueueStore, **fields: Any) -> None:
    values: dict[str, Any] = {"capacity": 100, "admit_per_second": 1000.0}
    values.update(fields)
    assert await store.configure(EVENT, EventConfig(require_tier1_token=True, **values)) in (
        "created",
        "updated",
    )
    await asyncio.sleep(0.02)


async def visit(store: QueueStore, user: str, rid: str, position: int) -> Any:
    return await store.visit(
        EVENT, user, enter=True, tier1_position=position, tier1_place=place_key(rid, position)
    )


async def test_every_end_of_a_stay_spends_its_place(store_on: QueueStore):
    await open_event(store_on, session_seconds=1)
    users = {"waits-and-leaves": 1, "leaves": 2, "completes": 3, "expires": 4, "lingers": 5}
    for user, number in users.items():
        assert isinstance(await visit(store_on, user, f"r-{user}", number), Waiting)
    await store_on.leave(EVENT, "waits-and-leaves", only_admitted=False)
    ticked = await store_on.tick(EVENT, **TICK)
    assert ticked is not None
    assert sorted(user for user, _ in ticked.admitted) == [
        "completes",
        "expires",
        "leaves",
        "lingers",
    ]
    # Admitted and still in their stay: the pass answers with the admission, nothing spent.
    assert isinstance(await visit(store_on, "leaves", "r-leaves", 2), Admitted)
    assert await store_on.spent_at(EVENT, place_key("r-leaves", 2)) is None
    await store_on.leave(EVENT, "leaves", only_admitted=False)
    await store_on.leave(EVENT, "completes", only_admitted=True)
    await asyncio.sleep(1.1)  # the sessions of "expires" and "lingers" are over
    expired = await store_on.tick(EVENT, **TICK)
    assert expired is not None
    assert sorted(expired.expired) == ["expires", "lingers"]
    for user, number in users.items():
        refusal = await visit(store_on, user, f"r-{user}", number)
        assert refusal is Refusal.TIER1_PASS_SPENT, user
        assert await store_on.spent_at(EVENT, place_key(f"r-{user}", number)) is not None
    outbox = await store_on.unmarked_places(EVENT, 100)
    assert sorted(place for place, _ in outbox) == sorted(
        place_key(f"r-{user}", number) for user, number in users.items()
    )
    await store_on.places_marked(EVENT, [place for place, _ in outbox])
    assert await store_on.unmarked_places(EVENT, 100) == []


async def test_an_admission_past_its_end_spends_its_place_before_any_tick(
    store_on: QueueStore,
):
    """The session is over but no tick reaped it yet: re-entry is refused all the same, and a
    new place taken meanwhile is not spent when the tick reaps the old admission."""
    await open_event(store_on, session_seconds=1)
    assert isinstance(await visit(store_on, "u1", "r-old", 1), Waiting)
    await store_on.tick(EVENT, **TICK)
    await asyncio.sleep(1.1)
    assert await visit(store_on, "u1", "r-old", 1) is Refusal.TIER1_PASS_SPENT
    fresh = await visit(store_on, "u1", "r-new", 9)
    assert isinstance(fresh, Waiting)
    ticked = await store_on.tick(EVENT, **TICK)
    assert ticked is not None
    assert ticked.expired == ["u1"]
    assert [user for user, _ in ticked.admitted] == ["u1"]
    assert await store_on.spent_at(EVENT, place_key("r-new", 9)) is None
    assert isinstance(await visit(store_on, "u1", "r-new", 9), Admitted)


async def test_a_pass_is_bound_to_the_first_account(store_on: QueueStore):
    await open_event(store_on, mode="paused")
    assert isinstance(await visit(store_on, "owner", "r-shared", 3), Waiting)
    assert await visit(store_on, "second", "r-shared", 3) is Refusal.TIER1_PASS_BOUND
    await store_on.leave(EVENT, "owner", only_admitted=False)
    # Spent, and still bound: a second account learns it is not theirs.
    assert await visit(store_on, "second", "r-shared", 3) is Refusal.TIER1_PASS_BOUND
    assert await visit(store_on, "owner", "r-shared", 3) is Refusal.TIER1_PASS_SPENT
    # The refused attempts wrote nothing: nobody waits, only the owner's place is spent.
    figures = await store_on.figures(EVENT)
    assert figures is not None
    assert figures.waiting == 0
    assert [place for place, _ in await store_on.unmarked_places(EVENT, 10)] == ["r-shared#3"]


async def test_a_passthrough_admission_spends_its_place_too(store_on: QueueStore):
    await open_event(store_on, mode="passthrough")
    assert isinstance(await visit(store_on, "u1", "r1", 1), Admitted)
    assert isinstance(await visit(store_on, "u1", "r1", 1), Admitted)  # still in the stay
    await store_on.leave(EVENT, "u1", only_admitted=True)
    assert await visit(store_on, "u1", "r1", 1) is Refusal.TIER1_PASS_SPENT


async def test_deleting_the_event_forgets_its_passes(store_on: QueueStore):
    await open_event(store_on)
    await visit(store_on, "u1", "r1", 1)
    await store_on.leave(EVENT, "u1", only_admitted=False)
    assert await store_on.delete_event(EVENT) == []
    keys = await store_on.redis.exists(
        "{once-1}:passes", "{once-1}:spent", "{once-1}:unmarked", "{once-1}:rids"
    )
    assert keys == 0


@pytest.mark.parametrize(
    ("place", "parsed"),
    [
        ("0b0c-uuid#7", ("0b0c-uuid", 7)),
        ("a#b#12", ("a#b", 12)),
        ("nohash", None),
        ("#5", None),
        ("r#", None),
        ("r#-1", None),
        ("r#1.5", None),
    ],
)
def test_place_keys(place: str, parsed: tuple[str, int] | None):
    assert parse_place_key(place) == parsed
    if parsed is not None:
        assert place_key(*parsed) == place


async def test_an_idle_drop_spends_its_place(single_redis: RedisSettings):
    """A pass holder who stops polling in Tier 2's line is dropped, and the place with them."""
    client = redis_client(single_redis)
    store = QueueStore(client, heartbeat_bucket_ms=500)
    try:
        await open_event(store, idle_timeout_seconds=6, mode="paused")
        assert isinstance(await visit(store, "quiet", "r-quiet", 1), Waiting)
        await asyncio.sleep(6.6)  # no poll for longer than the idle timeout
        await open_event(store, idle_timeout_seconds=6, mode="queue")
        ticked = await store.tick(EVENT, **TICK)
        assert ticked is not None
        assert ticked.dropped == [("quiet", 1)]
        assert await visit(store, "quiet", "r-quiet", 1) is Refusal.TIER1_PASS_SPENT
        assert [place for place, _ in await store.unmarked_places(EVENT, 10)] == ["r-quiet#1"]
    finally:
        await client.aclose()
