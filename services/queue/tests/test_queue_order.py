"""Tier-1 order: admission follows the signed Tier-1 number, not the order users reach Tier 2.

Released Tier-1 users learn of their release at their next poll, so they arrive shuffled. The
tick holds free slots for a lower number still on its way, for at most the grace; then the
missing numbers are waived. Runs on one Redis and on a Redis Cluster, ticks driven by the test.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from aiohttp.test_utils import TestClient

from urr_common.service import metrics_text
from urr_queue.app import ADMISSION_LOOP
from urr_queue.config import EventConfig
from urr_queue.settings import AdmissionSettings
from urr_queue.store import QueueStore, TickResult, Waiting

EVENT = "order-1"
TICK = {"max_admit": 2_000, "max_scan": 5_000, "max_expire": 2_000}


async def open_event(store: QueueStore, *, tier1: bool = True, **fields: object) -> None:
    values: dict[str, object] = {"capacity": 100, "admit_per_second": 1000.0}
    values.update(fields)
    config = EventConfig(require_tier1_token=tier1, **values)
    assert await store.configure(EVENT, config) == "created"
    await asyncio.sleep(0.02)  # the rate bucket starts empty


async def arrive(store: QueueStore, number: int) -> None:
    place = await store.visit(
        EVENT,
        f"user-{number}",
        enter=True,
        tier1_position=number,
        tier1_place=f"r{number}#{number}",
    )
    assert isinstance(place, Waiting), place


async def tick(store: QueueStore, grace_ms: int) -> TickResult:
    result = await store.tick(EVENT, order_grace_ms=grace_ms, **TICK)
    assert result is not None
    return result


def numbers(result: TickResult) -> list[int]:
    return [number for _, number in result.admitted]


def kendall_tau(order: list[int]) -> float:
    """Kendall's tau between ``order`` and its sorted self (1.0: exactly sorted)."""
    pairs = len(order) * (len(order) - 1) // 2
    discordant = sum(
        1 for i in range(len(order)) for j in range(i + 1, len(order)) if order[i] > order[j]
    )
    return 1.0 - 2.0 * discordant / pairs if pairs else 1.0


async def test_numbers_arriving_out_of_order_are_admitted_in_order(store_on: QueueStore):
    await open_event(store_on)
    await arrive(store_on, 3)
    held = await tick(store_on, 5_000)
    assert (numbers(held), held.order_held) == ([], True)  # 1 and 2 are on their way
    await arrive(store_on, 1)
    assert numbers(await tick(store_on, 5_000)) == [1]  # 2 is still missing
    await arrive(store_on, 2)
    last = await tick(store_on, 5_000)
    assert (numbers(last), last.order_held, last.order_waived) == ([2, 3], False, 0)
    figures = await store_on.figures(EVENT)
    assert figures is not None
    assert (figures.order_cursor, figures.order_hold_since_ms) == (4, None)


async def test_a_missing_number_holds_only_for_the_grace(store_on: QueueStore):
    await open_event(store_on)
    for number in (1, 3, 4, 5, 7, 8):  # 2 and 6 were released but are late
        await arrive(store_on, number)
    assert numbers(await tick(store_on, 300)) == [1]
    held = await tick(store_on, 300)
    assert (numbers(held), held.order_held) == ([], True)
    figures = await store_on.figures(EVENT)
    assert figures is not None
    assert figures.order_hold_since_ms is not None
    assert figures.order_cursor == 2
    await asyncio.sleep(0.35)
    # One grace gives up every number missing below the highest one waiting when the hold
    # began (2 and 6 alike): a hold per missing number would stall a sale with many no-shows.
    waived = await tick(store_on, 300)
    assert (numbers(waived), waived.order_held, waived.order_waived) == ([3, 4, 5, 7, 8], False, 2)
    assert waived.waived_numbers == (2, 6)
    # A waived number that turns up after all sorts to the front and goes next.
    await arrive(store_on, 2)
    await arrive(store_on, 10)  # 9 is missing: a new hold, 2 is not held by it
    late = await tick(store_on, 300)
    assert (numbers(late), late.order_held) == ([2], False)
    assert (await tick(store_on, 300)).order_held


async def test_grace_zero_and_other_events_keep_arrival_order(store_on: QueueStore):
    await open_event(store_on)
    for number in (5, 2):
        await arrive(store_on, number)
    assert numbers(await tick(store_on, 0)) == [2, 5]  # no hold for 1, 3 and 4

    other = "plain-1"
    await store_on.configure(other, EventConfig(capacity=10, admit_per_second=1000.0))
    await asyncio.sleep(0.02)
    for user in ("a", "b", "c"):
        assert isinstance(await store_on.visit(other, user, enter=True), Waiting)
    result = await store_on.tick(other, order_grace_ms=5_000, **TICK)
    assert result is not None
    assert ([user for user, _ in result.admitted], result.order_held) == (["a", "b", "c"], False)


async def test_a_new_tier1_room_starts_the_order_over(store_on: QueueStore):
    await open_event(store_on)
    for number in (1, 2, 3):
        await arrive(store_on, number)
    assert numbers(await tick(store_on, 5_000)) == [1, 2, 3]
    # Switched off and on again (only while nobody waits): the new room counts from 1 again.
    for tier1 in (False, True):
        config = EventConfig(require_tier1_token=tier1, capacity=100, admit_per_second=1000.0)
        assert await store_on.configure(EVENT, config) == "updated"
    second = await store_on.visit(EVENT, "new-2", enter=True, tier1_position=2, tier1_place="n2#2")
    assert isinstance(second, Waiting)
    assert (await tick(store_on, 5_000)).order_held  # the old room's 1 and 2 do not count
    first = await store_on.visit(EVENT, "new-1", enter=True, tier1_position=1, tier1_place="n1#1")
    assert isinstance(first, Waiting)
    assert numbers(await tick(store_on, 5_000)) == [1, 2]


async def test_holds_and_waivers_keep_capacity_and_rate(store_on: QueueStore):
    await open_event(store_on, capacity=3, admit_per_second=20.0)
    for number in (2, 3, 4, 5, 6, 7, 8, 9):  # 1 never comes
        await arrive(store_on, number)
    clock = asyncio.get_running_loop().time
    started = clock()
    admitted: list[int] = []
    # Past the grace, and on until the waiver shows (a busy machine may stall the ticks).
    while clock() - started < 0.6 or (not admitted and clock() - started < 10):
        result = await tick(store_on, 200)
        assert result.active <= 3
        admitted += numbers(result)
        await asyncio.sleep(0.02)
    assert admitted == [2, 3, 4]  # waived after 200 ms, then capacity is the limit

    await store_on.delete_event(EVENT)
    started = clock()  # the rate bucket starts empty from here
    await open_event(store_on, capacity=1_000, admit_per_second=20.0)
    for number in range(2, 200):
        await arrive(store_on, number)
    admitted = []
    while clock() - started < 0.8 or (not admitted and clock() - started < 10):
        admitted += numbers(await tick(store_on, 200))
        # Holding lets the bucket fill (20/s, at most 20), waiving spends it: never more.
        assert len(admitted) <= 20 * (clock() - started) + 1
        await asyncio.sleep(0.02)
    assert admitted == sorted(admitted)
    assert admitted


async def test_shuffled_arrivals_within_the_grace_are_admitted_exactly_in_order(
    store_on: QueueStore,
):
    """200 numbers released in order, each arriving after a random delay below the grace."""
    rng = random.Random(7)
    await open_event(store_on, capacity=5)
    count, grace_ms = 200, 3_000  # delays < 0.3 s; the margin absorbs a busy machine
    arrivals = sorted(
        (number * 0.002 + rng.uniform(0, 0.3), number) for number in range(1, count + 1)
    )
    assert [n for _, n in arrivals] != sorted(n for _, n in arrivals)

    async def users() -> None:
        started = asyncio.get_running_loop().time()
        for at, number in arrivals:
            await asyncio.sleep(max(0.0, at - (asyncio.get_running_loop().time() - started)))
            await arrive(store_on, number)

    order: list[int] = []
    arriving = asyncio.create_task(users())
    try:
        while len(order) < count:
            result = await tick(store_on, grace_ms)
            assert result.active <= 5
            assert result.order_waived == 0
            order += numbers(result)
            # The booking ends at once, freeing the slot for the next tick.
            for user, _ in result.admitted:
                await store_on.leave(EVENT, user, only_admitted=True)
            await asyncio.sleep(0.01)
    finally:
        await arriving
    assert order == list(range(1, count + 1))
    assert kendall_tau(order) == 1.0


async def test_operators_see_the_hold(
    redis_settings, queue_client, as_user, admin_headers, tier1_signer
):
    client: TestClient[Any, Any] = await queue_client(
        redis_settings, admission=AdmissionSettings(enabled=False, tier1_order_grace_s=0.2)
    )
    path = f"/api/v1/admin/queue/{EVENT}"
    response = await client.put(
        path, json={"require_tier1_token": True, "admit_per_second": 1000}, headers=admin_headers
    )
    assert response.status == 201
    token = tier1_signer.sign("r2", {"evt": EVENT, "rid": "r2", "pos": 2, "uid": "u2"})
    entered = await client.post(
        f"/api/v1/queue/{EVENT}/enter", headers=as_user("u2"), cookies={"urr-vwr-token": token}
    )
    assert entered.status == 201, await entered.text()
    loop = client.app[ADMISSION_LOOP]
    await asyncio.sleep(0.02)  # the rate bucket starts empty
    held = await loop.tick(EVENT)
    assert held is not None
    assert held.order_held
    live = (await (await client.get(path, headers=admin_headers)).json())["live"]
    assert live["order_cursor"] == 1
    assert live["order_holding_seconds"] >= 0
    await asyncio.sleep(0.25)
    result = await loop.tick(EVENT)
    assert result is not None
    assert numbers(result) == [2]
    assert result.order_waived == 1
    assert result.waived_numbers == (1,)
    live = (await (await client.get(path, headers=admin_headers)).json())["live"]
    assert (live["order_cursor"], live["order_holding_seconds"]) == (3, None)
    metrics = metrics_text(client.app)
    assert "urr_queue_order_held_ticks_total 1.0" in metrics
    assert "urr_queue_order_waived_total 1.0" in metrics
