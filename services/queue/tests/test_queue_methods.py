"""Queueing methods of Tier 2 (issue 19): fifo, random, passthrough, reject, over HTTP.

The random order is recomputed here from the seed with ``urr_common.fairness`` (the Python
definition Tier 1 uses), so the entry script's HMAC in Lua is checked against it.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from urr_common.fairness import random_order
from urr_queue.app import ADMISSION_LOOP

EVENT = "methods-1"
SEED = "5e" * 32
ADMIN = "/api/v1/admin/queue/"


async def put(client: Any, admin_headers: dict[str, str], event: str = EVENT, **fields: Any):
    return await client.put(f"{ADMIN}{event}", json=fields, headers=admin_headers)


async def enter(client: Any, headers: dict[str, str], event: str = EVENT):
    return await client.post(f"/api/v1/queue/{event}/enter", headers=headers)


async def test_random_admits_in_the_seeds_order(
    redis_settings, queue_client, as_user, admin_headers
):
    client = await queue_client(redis_settings)
    answer = await put(
        client,
        admin_headers,
        capacity=1,
        admit_per_second=1000,
        queue_method="random",
        order_seed=SEED,
    )
    assert answer.status == 201, await answer.text()
    body = await answer.json()
    assert body["config"]["queue_method"] == "random"
    assert body["order_seed_commitment"] == hashlib.sha256(bytes.fromhex(SEED)).hexdigest()
    users = [f"user-{index:02d}" for index in range(20)]
    for user in users:
        response = await enter(client, as_user(user))
        assert response.status == 201
        assert (await response.json())["queue_method"] == "random"
    expected = random_order(bytes.fromhex(SEED), users)
    assert expected != users  # 20! orders: arrival order by chance would be a broken draw
    # Positions already follow the draw.
    for user in users:
        status = await client.get(f"/api/v1/queue/{EVENT}/status", headers=as_user(user))
        assert (await status.json())["position"] == expected.index(user) + 1
    # One slot: each admitted user leaves before the next tick, so each tick admits the head.
    order: list[str] = []
    for _ in range(500):
        results = await client.app[ADMISSION_LOOP].tick_all()
        for result in results:
            for user, _number in result.admitted:
                order.append(user)
                left = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user(user))
                assert left.status == 200
        if len(order) == len(users):
            break
        await asyncio.sleep(0.005)
    assert order == expected


async def test_passthrough_lets_everyone_straight_in(
    single_redis, queue_client, as_user, admin_headers
):
    client = await queue_client(single_redis)
    assert (await put(client, admin_headers, capacity=1, queue_method="passthrough")).status == 201
    for user in ("a", "b", "c"):
        response = await enter(client, as_user(user))
        assert response.status == 200, await response.text()
        assert (await response.json())["status"] == "admitted"


async def test_reject_refuses_entry_and_turns_waiters_away(
    single_redis, queue_client, as_user, admin_headers
):
    client = await queue_client(single_redis)
    assert (await put(client, admin_headers, capacity=1, admit_per_second=0.001)).status == 201
    waiting = await enter(client, as_user("early"))
    assert waiting.status == 201
    assert (await put(client, admin_headers, queue_method="reject")).status == 200
    refused = await enter(client, as_user("late"))
    assert refused.status == 409
    assert refused.content_type == "application/problem+json"
    assert (await refused.json())["code"] == "event_closed"
    polled = await client.get(f"/api/v1/queue/{EVENT}/status", headers=as_user("early"))
    assert polled.status == 409
    # The place is gone: nobody waits, and a tick admits nobody.
    results = await client.app[ADMISSION_LOOP].tick_all()
    assert all(not result.admitted for result in results)
    figures = await client.get(f"{ADMIN}{EVENT}", headers=admin_headers)
    assert (await figures.json())["live"]["waiting"] == 0
    capacity = await client.get(f"/api/v1/queue/{EVENT}/capacity")
    assert (await capacity.json())["admit_per_second"] == 0.0


async def test_bad_method_and_seed_changes_are_refused_and_change_nothing(
    single_redis, queue_client, as_user, admin_headers
):
    client = await queue_client(single_redis)
    unknown = await put(client, admin_headers, queue_method="lottery")
    assert unknown.status == 422
    assert unknown.content_type == "application/problem+json"
    assert (await client.get(f"{ADMIN}{EVENT}", headers=admin_headers)).status == 404
    short = await put(client, admin_headers, queue_method="random", order_seed="abc")
    assert short.status == 422
    assert (await client.get(f"{ADMIN}{EVENT}", headers=admin_headers)).status == 404

    assert (await put(client, admin_headers, queue_method="random", order_seed=SEED)).status == 201
    same = await put(client, admin_headers, order_seed=SEED)
    assert same.status == 200
    other = await put(client, admin_headers, order_seed="7a" * 32, capacity=5)
    assert other.status == 422
    assert (await other.json())["code"] == "order_seed_immutable"
    view = await (await client.get(f"{ADMIN}{EVENT}", headers=admin_headers)).json()
    assert view["config"]["capacity"] != 5
    assert view["order_seed_commitment"] == hashlib.sha256(bytes.fromhex(SEED)).hexdigest()

    # fifo <-> random mixes arrival numbers with order keys: only while nobody waits.
    assert (await enter(client, as_user("waiter"))).status == 201
    switch = await put(client, admin_headers, queue_method="fifo")
    assert switch.status == 409
    assert (await switch.json())["code"] == "queue_not_empty"
    view = await (await client.get(f"{ADMIN}{EVENT}", headers=admin_headers)).json()
    assert view["config"]["queue_method"] == "random"


async def test_an_event_gets_a_seed_of_its_own(single_redis, queue_client, admin_headers):
    client = await queue_client(single_redis)
    first = await (await put(client, admin_headers, event="own-a")).json()
    second = await (await put(client, admin_headers, event="own-b")).json()
    assert first["order_seed_commitment"] != second["order_seed_commitment"]
    assert len(first["order_seed_commitment"]) == 64
