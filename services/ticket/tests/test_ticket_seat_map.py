"""The seat map with its catalogue kept per process (``urr_ticket.seat_map``, issue 22): every
call shows the claims and holds as they are now, for the caller, and the catalogue as it is now
whoever changed it; the answer is byte for byte what the map answered before the cache."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import orjson
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_common.identity_testing import act_as, as_gateway
from urr_common.settings import RedisSettings
from urr_devstack.procs import free_port
from urr_ticket import keys
from urr_ticket.app import AUDIENCE, create_app
from urr_ticket.appkeys import SEAT_MAPS_KEY, STORE_KEY
from urr_ticket.seat_locks import parse_hold
from urr_ticket.seat_map import SeatMaps
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket.settings import TicketSettings
from urr_ticket.store import BookingStore

pytestmark = pytest.mark.integration


async def seat_map(client: Any, user: str | None = None, event_id: str = "demo") -> Any:
    headers = act_as(user) if user is not None else {}
    response = await client.get(f"/api/v1/seats/{event_id}", headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


def states(body: Any) -> dict[str, tuple[str, bool]]:
    return {s["seatId"]: (s["state"], s["heldByYou"]) for s in body["seats"]}


async def problem(response: Any, status: int, code: str) -> None:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    assert (await response.json())["code"] == code


async def reservation(db: asyncpg.Pool, user_id: str, seats: list[str], status: str) -> uuid.UUID:
    """A reservation claiming ``seats``, as the worker (awaiting payment) or the outcome
    consumer (confirmed) writes it."""
    rid = uuid.uuid4()
    await db.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
        " VALUES ($1, 'demo', $2, $3, $4)",
        rid,
        user_id,
        seats,
        status,
    )
    await db.executemany(
        "INSERT INTO seat_claims VALUES ('demo', $1, $2)", [(seat, rid) for seat in seats]
    )
    return rid


async def ended(db: asyncpg.Pool, rid: uuid.UUID, status: str) -> None:
    """The reservation ends without a sale: its claims go, as the worker does it."""
    await db.execute("DELETE FROM seat_claims WHERE reservation_id = $1", rid)
    await db.execute("UPDATE reservations SET status = $2 WHERE reservation_id = $1", rid, status)


async def expected_body(
    db: asyncpg.Pool, redis_url: str, event_id: str, caller: str | None
) -> bytes:
    """The map as the route built it before the cache: one join over every seat, every
    seat's hold, a dictionary per seat, ``orjson``."""
    rows = await BookingStore(db).seats(event_id)
    redis = Redis.from_url(redis_url)
    try:
        values = (
            await redis.mget([keys.seat_lock(event_id, r.seat_id) for r in rows]) if rows else []
        )
    finally:
        await redis.aclose()
    out = []
    for row, value in zip(rows, values, strict=True):
        hold = parse_hold(value)
        owner = hold.owner if hold is not None else None
        if row.claim_status == "confirmed":
            state = "sold"
        elif row.claim_status is not None or owner is not None:
            state = "held"
        else:
            state = "free"
        out.append(
            {
                "seatId": row.seat_id,
                "row": row.row_label,
                "number": row.seat_number,
                "priceCents": row.price_cents,
                "state": state,
                "heldByYou": state == "held" and bool(caller) and owner == caller,
            }
        )
    return orjson.dumps({"eventId": event_id, "seats": out})


async def test_a_seat_just_held_released_or_sold_shows_so_at_once_for_everyone(
    client: Any, db: asyncpg.Pool
) -> None:
    assert states(await seat_map(client, "u1"))["A1"] == ("free", False)  # catalogue kept now
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=act_as("u1"))).status == 200
    assert states(await seat_map(client, "u1"))["A1"] == ("held", True)
    assert states(await seat_map(client, "u2"))["A1"] == ("held", False)
    assert states(await seat_map(client))["A1"] == ("held", False)  # anonymous
    assert (await client.delete("/api/v1/seats/demo/A1/hold", headers=act_as("u1"))).status == 204
    assert states(await seat_map(client, "u1"))["A1"] == ("free", False)
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=act_as("u2"))).status == 200
    assert states(await seat_map(client, "u1"))["A1"] == ("held", False)
    assert states(await seat_map(client, "u2"))["A1"] == ("held", True)
    # The worker claims it (awaiting payment): still held, still the holder's.
    rid = await reservation(db, "u2", ["A1"], "awaiting_payment")
    assert states(await seat_map(client, "u2"))["A1"] == ("held", True)
    assert states(await seat_map(client, "u1"))["A1"] == ("held", False)
    # Paid: sold for everyone, the buyer included, though the hold is not released yet.
    await db.execute("UPDATE reservations SET status = 'confirmed' WHERE reservation_id = $1", rid)
    assert states(await seat_map(client, "u2"))["A1"] == ("sold", False)
    assert states(await seat_map(client, "u1"))["A1"] == ("sold", False)


async def test_a_claim_without_a_hold_is_held_and_an_ended_one_frees_the_seat(
    client: Any, db: asyncpg.Pool, redis_url: str
) -> None:
    await seat_map(client, "u1")
    rid = await reservation(db, "u1", ["B2", "B3"], "awaiting_payment")
    seen = states(await seat_map(client, "u1"))
    assert seen["B2"] == seen["B3"] == ("held", False)  # the hold is gone, the claim is not
    await ended(db, rid, "declined")
    seen = states(await seat_map(client, "u1"))
    assert seen["B2"] == seen["B3"] == ("free", False)
    # A hold that ends by its TTL frees the seat at once too.
    assert (await client.post("/api/v1/seats/demo/C4/hold", headers=act_as("u1"))).status == 200
    assert states(await seat_map(client, "u1"))["C4"] == ("held", True)
    redis = Redis.from_url(redis_url)
    try:
        await redis.delete(keys.seat_lock("demo", "C4"))
    finally:
        await redis.aclose()
    assert states(await seat_map(client, "u1"))["C4"] == ("free", False)


async def test_the_answer_is_byte_for_byte_the_one_before_the_cache(
    client: Any, db: asyncpg.Pool, redis_url: str
) -> None:
    async def same(caller: str | None) -> None:
        headers = act_as(caller) if caller is not None else {}
        response = await client.get("/api/v1/seats/demo", headers=headers)
        assert await response.read() == await expected_body(db, redis_url, "demo", caller)

    await same(None)  # all free, read cold
    await same("u1")  # all free, from the kept catalogue
    for seat, who in (("A1", "u1"), ("A2", "u2"), ("J10", "u1"), ("E5", "u3")):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=act_as(who))
        ).status == 200
    await reservation(db, "u2", ["A2"], "awaiting_payment")
    await reservation(db, "u1", ["J10"], "confirmed")  # sold, its hold not released yet
    await reservation(db, "u4", ["D1", "D2"], "confirmed")
    await reservation(db, "u5", ["F7"], "awaiting_payment")
    for caller in ("u1", "u2", "u3", "u4", "u5", None):
        await same(caller)
    # Every seat sold: no hold is read, the answer is the same.
    claimed = {row["seat_id"] for row in await db.fetch("SELECT seat_id FROM seat_claims")}
    free = [seat for seat, *_ in DemoEvent().seats() if seat not in claimed]
    await reservation(db, "u6", free, "confirmed")
    await db.execute("UPDATE reservations SET status = 'confirmed'")
    for caller in ("u1", "u2", None):
        await same(caller)


async def test_a_catalogue_change_by_another_process_shows_at_once(
    client: Any, db: asyncpg.Pool, postgres_dsn: str, redis_url: str
) -> None:
    assert len((await seat_map(client, "u1"))["seats"]) == 100
    # The seed, another process with its own connections, adds two rows of seats.
    other = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=1)
    try:
        assert await seed_catalog(other, DemoEvent(rows=12)) == 20
        seats = states(await seat_map(client, "u1"))
        assert len(seats) == 120
        assert seats["L10"] == ("free", False)
        # A price changed by hand, a seat removed by hand.
        await other.execute(
            "UPDATE seats SET price_cents = 1 WHERE event_id = 'demo' AND seat_id = 'A1'"
        )
        await other.execute("DELETE FROM seats WHERE event_id = 'demo' AND seat_id = 'L10'")
    finally:
        await other.close()
    body = await seat_map(client, "u1")
    by_id = {s["seatId"]: s for s in body["seats"]}
    assert by_id["A1"]["priceCents"] == 1
    assert "L10" not in by_id
    assert len(by_id) == 119
    response = await client.get("/api/v1/seats/demo", headers=act_as("u1"))
    assert await response.read() == await expected_body(db, redis_url, "demo", "u1")


async def test_sales_keep_the_catalogue_and_catalogue_changes_replace_it(
    client: Any, db: asyncpg.Pool
) -> None:
    maps = client.app[SEAT_MAPS_KEY]
    store = client.app[STORE_KEY]
    reads = 0
    real = store.seat_catalog

    async def counted(event_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await real(event_id)

    store.seat_catalog = counted
    assert isinstance(maps, SeatMaps)
    await seat_map(client, "u1")
    assert reads == 1
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=act_as("u1"))).status == 200
    rid = await reservation(db, "u1", ["A1"], "awaiting_payment")
    await db.execute("UPDATE reservations SET status = 'confirmed' WHERE reservation_id = $1", rid)
    await seat_map(client, "u2")
    assert reads == 1  # claims and holds change no catalogue version
    version = await db.fetchval("SELECT seats_version FROM booking_events WHERE event_id = 'demo'")
    await db.execute("UPDATE booking_events SET max_seats_per_user = 2 WHERE event_id = 'demo'")
    assert (
        await db.fetchval("SELECT seats_version FROM booking_events WHERE event_id = 'demo'")
        == version
    )
    await db.execute("UPDATE seats SET row_label = row_label WHERE event_id = 'demo'")
    assert (
        await db.fetchval("SELECT seats_version FROM booking_events WHERE event_id = 'demo'")
        != version
    )
    assert states(await seat_map(client, "u2"))["A1"] == ("sold", False)
    assert reads == 2
    await seat_map(client, "u2")
    assert reads == 2


async def test_every_change_to_seats_gives_the_event_a_new_version(db: asyncpg.Pool) -> None:
    await seed_catalog(db, DemoEvent(event_id="other", rows=1))

    async def versions() -> dict[str, uuid.UUID]:
        rows = await db.fetch("SELECT event_id, seats_version FROM booking_events")
        return {row["event_id"]: row["seats_version"] for row in rows}

    async def changes(statement: str, *expected: str) -> None:
        before = await versions()
        await db.execute(statement)
        after = await versions()
        assert {e for e in after if after[e] != before[e]} == set(expected), statement

    await changes("INSERT INTO seats VALUES ('demo', 'Z1', 'Z', 1, 100)", "demo")
    await changes("UPDATE seats SET price_cents = 5 WHERE seat_id = 'Z1'", "demo")
    await changes("UPDATE seats SET event_id = 'other' WHERE seat_id = 'Z1'", "demo", "other")
    await changes("DELETE FROM seats WHERE seat_id = 'Z1'", "other")
    await changes("UPDATE seats SET price_cents = 5 WHERE seat_id = 'nope'")
    await changes("INSERT INTO seats VALUES ('demo', 'A1', 'A', 1, 1) ON CONFLICT DO NOTHING")
    async with db.acquire() as conn, conn.transaction():  # as logical replication applies
        await conn.execute("SET LOCAL session_replication_role = replica")
        before = await versions()
        await conn.execute("UPDATE seats SET price_cents = 7 WHERE seat_id = 'A1'")
    after = await versions()
    assert after["demo"] != before["demo"]
    await changes("TRUNCATE seats, seat_claims", "demo", "other")
    # A recreated event never meets its old version.
    old = (await versions())["other"]
    await db.execute("DELETE FROM booking_events WHERE event_id = 'other'")
    await db.execute("INSERT INTO booking_events (event_id, name) VALUES ('other', 'again')")
    assert (await versions())["other"] != old


async def test_an_event_removed_and_unknown_or_bad_ids_are_404_problems(
    client: Any, db: asyncpg.Pool
) -> None:
    await seed_catalog(db, DemoEvent(event_id="gone", rows=1))
    assert len((await seat_map(client, "u1", "gone"))["seats"]) == 10
    await db.execute("DELETE FROM seats WHERE event_id = 'gone'")
    assert (await seat_map(client, "u1", "gone"))["seats"] == []
    await db.execute("DELETE FROM booking_events WHERE event_id = 'gone'")
    await problem(await client.get("/api/v1/seats/gone"), 404, "event_not_found")
    await problem(
        await client.get("/api/v1/seats/nope", headers=act_as("u1")), 404, "event_not_found"
    )
    for bad in ("x" * 65, "a%20b", "..%2F", "%C3%A9", "a.b", "a%00b"):
        await problem(await client.get(f"/api/v1/seats/{bad}"), 404, "event_not_found")
    await problem(await client.post("/api/v1/seats/demo"), 405, "method_not_allowed")


async def test_more_events_than_kept_all_show_right(client: Any, db: asyncpg.Pool) -> None:
    maps = client.app[SEAT_MAPS_KEY]
    maps._max_events = 2
    for name in ("e1", "e2", "e3"):
        await seed_catalog(db, DemoEvent(event_id=name, rows=1, seats_per_row=3))
    for _ in range(2):
        for name in ("e1", "e2", "e3", "demo"):
            seats = (await seat_map(client, "u1", name))["seats"]
            assert len(seats) == (100 if name == "demo" else 3)
    assert len(maps._catalogs) == 2
    # At once, the kept ones dropped while others wait on PostgreSQL or Redis.
    names = ["e1", "e2", "e3", "demo"] * 10
    answers = await asyncio.gather(
        *(client.get(f"/api/v1/seats/{name}", headers=act_as("u1")) for name in names)
    )
    for name, response in zip(names, answers, strict=True):
        assert response.status == 200
        assert len((await response.json())["seats"]) == (100 if name == "demo" else 3)
    assert len(maps._catalogs) <= 2


async def test_redis_is_needed_only_while_a_seat_is_not_sold(
    aiohttp_client: Any, settings: TicketSettings, db: asyncpg.Pool
) -> None:
    refused = RedisSettings(
        url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.3, connect_timeout_s=0.3
    )
    client = await aiohttp_client(
        create_app(settings.model_copy(update={"redis": refused}), registry=CollectorRegistry()),
        middlewares=(as_gateway(AUDIENCE),),
    )
    await problem(await client.get("/api/v1/seats/demo"), 503, "seat_holds_unavailable")
    await reservation(db, "u1", [seat for seat, *_ in DemoEvent().seats()], "confirmed")
    # Every seat sold: no hold can change what the map shows.
    seats = (await seat_map(client, "u2"))["seats"]
    assert {s["state"] for s in seats} == {"sold"}
