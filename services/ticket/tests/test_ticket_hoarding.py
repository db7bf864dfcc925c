"""Seat hoarding (issue 15) on real Redis, PostgreSQL and SQS (moto): the per-account cap
across sessions, holds that never extend and end with the Tier-2 session, releases when the
session ends, and refusals that write nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio

from urr_common.clients import open_redis
from urr_common.identity_testing import act_as
from urr_common.service import REGISTRY_KEY
from urr_common.settings import RedisSettings
from urr_common.tokens import SigningKey, TokenSigner
from urr_devstack.procs import free_port
from urr_devstack.testing import patient_redis
from urr_ticket import keys
from urr_ticket.outcomes import SessionEndHandler
from urr_ticket.seat_locks import SeatLocks, SeatLocksUnavailable

pytestmark = pytest.mark.integration

_SIGNER = TokenSigner(SigningKey.generate("queue-test"), "urr-queue", "urr-entry", 900)


def entry_token(user_id: str, event_id: str = "demo", *, ttl_s: int = 900) -> str:
    """An entry token as the queue signs it (the gateway has verified it upstream)."""
    return _SIGNER.sign(user_id, {"evt": event_id}, ttl_s=ttl_s)


def session(user_id: str, token: str | None = None) -> dict[str, str]:
    """The headers the gateway forwards for one Tier-2 session of ``user_id``."""
    return act_as(user_id, "user", **{"x-queue-entry-token": token or entry_token(user_id)})


async def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert body["code"] == code
    return body


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Any]:
    async with open_redis(patient_redis(redis_url)) as client:
        yield client


async def held_by(redis: Any, user_id: str, event_id: str = "demo") -> list[str]:
    """Seats whose hold key names ``user_id`` (read from the seat keys, not the index)."""
    found = []
    async for key in redis.scan_iter(match=f"seat-lock:{{{event_id}}}:*"):
        value = await redis.get(key)
        if value is not None and value.decode().split(" ")[0] == user_id:
            found.append(key.decode().rsplit(":", 1)[1])
    return sorted(found)


SEATS = [f"{row}{n}" for row in "ABCDEFGHIJ" for n in range(1, 11)]


# --- the cap ------------------------------------------------------------------------------


async def test_one_account_cannot_hold_every_seat(client: Any, redis: Any) -> None:
    """The attack of issue 15: one account walking the seat map holding everything."""
    codes = []
    for seat in SEATS:
        response = await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=session("bot"))
        codes.append(response.status)
        if response.status == 409:
            body = await problem(response, 409, "seat_limit_reached")
            assert body["maxSeatsPerUser"] == 4
            assert body["seatsCounted"] == 4
    assert codes.count(200) == 4
    assert await held_by(redis, "bot") == SEATS[:4]
    registry = client.server.app[REGISTRY_KEY]
    refused = registry.get_sample_value("urr_ticket_holds_total", {"outcome": "limit_reached"})
    assert refused == len(SEATS) - 4
    # A fan gets the fifth seat.
    assert (await client.post("/api/v1/seats/demo/A5/hold", headers=session("fan"))).status == 200


async def test_two_sessions_of_one_account_racing_never_pass_the_cap(
    client: Any, redis: Any
) -> None:
    # Two sessions (two devices: two tokens) of one account fire 30 holds at once, 10 rounds.
    for round_ in range(10):
        user = f"scalper-{round_}"
        tokens = [entry_token(user), entry_token(user)]
        seats = SEATS[round_ * 10 : round_ * 10 + 10]
        responses = await asyncio.gather(
            *(
                client.post(f"/api/v1/seats/demo/{seat}/hold", headers=session(user, token))
                for token in tokens
                for seat in seats
                for _ in range(2 if seat.endswith("1") else 1)
            )
        )
        statuses = [r.status for r in responses]
        for response in responses:
            if response.status != 200:
                await problem(response, 409, "seat_limit_reached")
        holds = await held_by(redis, user)
        assert len(holds) == 4, (statuses, holds)
        assert await redis.zcard(keys.user_holds("demo", user)) == 4


async def test_seats_in_reservations_count_towards_the_cap(
    client: Any, db: asyncpg.Pool, redis: Any
) -> None:
    # u1 bought three seats: one more hold fits, the next does not.
    await db.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
        " VALUES ($1, 'demo', 'u1', ARRAY['J1', 'J2', 'J3'], 'confirmed')",
        uuid.uuid4(),
    )
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=session("u1"))).status == 200
    body = await problem(
        await client.post("/api/v1/seats/demo/A2/hold", headers=session("u1")),
        409,
        "seat_limit_reached",
    )
    assert body["seatsCounted"] == 4
    # u2's pending reservation names seats u2 still holds: each seat counts once.
    for seat in ("C1", "C2"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=session("u2"))
        ).status == 200
    await db.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
        " VALUES ($1, 'demo', 'u2', ARRAY['C1', 'C2'], 'pending')",
        uuid.uuid4(),
    )
    for seat in ("C3", "C4"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=session("u2"))
        ).status == 200
    await problem(
        await client.post("/api/v1/seats/demo/C5/hold", headers=session("u2")),
        409,
        "seat_limit_reached",
    )
    # Seats u1 bought and passed on still count for u1 (and not for the recipient).
    await db.execute(
        "UPDATE reservations SET bought_by = 'u1', user_id = 'u3' WHERE user_id = 'u1'"
    )
    await problem(
        await client.post("/api/v1/seats/demo/A2/hold", headers=session("u1")),
        409,
        "seat_limit_reached",
    )
    for seat in ("D1", "D2", "D3", "D4"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=session("u3"))
        ).status == 200
    # A finished reservation no longer counts.
    await db.execute("UPDATE reservations SET status = 'cancelled' WHERE bought_by = 'u1'")
    assert (await client.post("/api/v1/seats/demo/A2/hold", headers=session("u1"))).status == 200


async def test_the_cap_and_hold_length_are_per_event_settings(
    client: Any, db: asyncpg.Pool
) -> None:
    await db.execute("UPDATE booking_events SET max_seats_per_user = 1, hold_seconds = 30")
    event = await (await client.get("/api/v1/events/demo")).json()
    assert (event["maxSeatsPerUser"], event["holdSeconds"]) == (1, 30)
    before = int(time.time() * 1000)
    held = await (await client.post("/api/v1/seats/demo/A1/hold", headers=session("u1"))).json()
    assert held["maxSeatsPerUser"] == 1
    assert before + 29_000 <= held["expiresAtMs"] <= before + 31_000
    body = await problem(
        await client.post("/api/v1/seats/demo/A2/hold", headers=session("u1")),
        409,
        "seat_limit_reached",
    )
    assert body["maxSeatsPerUser"] == 1


# --- hold length --------------------------------------------------------------------------


async def test_holding_again_or_after_a_release_never_extends_the_hold(
    client: Any, redis: Any
) -> None:
    headers = session("u1")
    first = await (await client.post("/api/v1/seats/demo/A1/hold", headers=headers)).json()
    await asyncio.sleep(0.2)
    again = await (await client.post("/api/v1/seats/demo/A1/hold", headers=headers)).json()
    assert again["holdId"] == first["holdId"]
    assert abs(again["expiresAtMs"] - first["expiresAtMs"]) <= 1
    # Releasing and holding again keeps the first start: same end, new hold id.
    assert (await client.delete("/api/v1/seats/demo/A1/hold", headers=headers)).status == 204
    await asyncio.sleep(0.2)
    rehold = await (await client.post("/api/v1/seats/demo/A1/hold", headers=headers)).json()
    assert rehold["holdId"] != first["holdId"]
    assert abs(rehold["expiresAtMs"] - first["expiresAtMs"]) <= 1
    # Once its hold time in the session is used up, the seat cannot be held again by u1.
    # (Time passing is simulated by moving the recorded start back by holdSeconds.)
    assert (await client.delete("/api/v1/seats/demo/A1/hold", headers=headers)).status == 204
    starts = keys.hold_starts("demo", "u1")
    started, session_end = (await redis.hget(starts, "A1")).decode().split(" ")
    await redis.hset(starts, "A1", f"{int(started) - 300_000} {session_end}")
    await problem(
        await client.post("/api/v1/seats/demo/A1/hold", headers=headers), 409, "hold_time_used"
    )
    assert await held_by(redis, "u1") == []
    # Another user may hold it; so may u1 in a new session (another session end).
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=session("u2"))).status == 200


async def test_a_hold_ends_with_the_session(client: Any, redis: Any) -> None:
    token = entry_token("u1", ttl_s=3)
    session_end_ms = int(time.time() + 3) * 1000  # the token's exp, in whole seconds
    held = await (
        await client.post("/api/v1/seats/demo/A1/hold", headers=session("u1", token))
    ).json()
    assert abs(held["expiresAtMs"] - session_end_ms) <= 1000
    assert 0 < await redis.pttl(keys.seat_lock("demo", "A1")) <= 3000
    # The cookie carries the same token when the header is absent.
    cookie = act_as("u1", Cookie=f"urr-entry-token={token}")
    from_cookie = await (await client.post("/api/v1/seats/demo/A2/hold", headers=cookie)).json()
    assert abs(from_cookie["expiresAtMs"] - held["expiresAtMs"]) <= 1000


async def test_refused_entry_tokens_write_nothing(client: Any, redis: Any) -> None:
    cases = [
        (entry_token("u1", ttl_s=-5), 403, "entry_token_expired"),
        (entry_token("someone-else"), 403, "entry_token_wrong_user"),
        (entry_token("u1", "other-event"), 403, "entry_token_wrong_event"),
        ("not-a-token", 403, "entry_token_invalid"),
    ]
    for token, status, code in cases:
        await problem(
            await client.post("/api/v1/seats/demo/A1/hold", headers=session("u1", token)),
            status,
            code,
        )
    assert await redis.keys("*") == []


async def test_bad_input_answers_4xx_and_writes_nothing(client: Any, redis: Any) -> None:
    headers = session("u1")
    await problem(
        await client.post(
            "/api/v1/seats/nope/A1/hold", headers=session("u1", entry_token("u1", "nope"))
        ),
        404,
        "event_not_found",
    )
    await problem(
        await client.post("/api/v1/seats/demo/Z99/hold", headers=headers), 404, "seat_not_found"
    )
    await problem(
        await client.post("/api/v1/seats/demo/A%201/hold", headers=headers), 404, "seat_not_found"
    )
    assert await redis.keys("*") == []
    for seat in SEATS[:4]:
        assert (await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=headers)).status == 200
    before = {k: await redis.dump(k) for k in await redis.keys("*")}
    await problem(
        await client.post("/api/v1/seats/demo/J10/hold", headers=headers), 409, "seat_limit_reached"
    )
    assert {k: await redis.dump(k) for k in await redis.keys("*")} == before


# --- session ends -----------------------------------------------------------------------


def queue_record(kind: str, user_id: str, at_ms: int | None, event_id: str = "demo") -> Any:
    value = {
        "id": uuid.uuid4().hex,
        "type": kind,
        "eventId": event_id,
        "userId": user_id,
        "at": at_ms,
    }
    return SimpleNamespace(value=orjson.dumps(value), topic="queue-events", offset=0)


async def test_every_hold_is_released_when_the_session_ends(client: Any, redis: Any) -> None:
    for seat in ("A1", "A2", "A3"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=session("u1"))
        ).status == 200
    assert (await client.post("/api/v1/seats/demo/B1/hold", headers=session("u2"))).status == 200
    handler = SessionEndHandler(SeatLocks(redis))
    now_ms = int(time.time() * 1000) + 1000
    assert await handler.handle(queue_record("admitted", "u1", now_ms)) == "ignored"
    assert await held_by(redis, "u1") == ["A1", "A2", "A3"]
    assert await handler.handle(queue_record("left", "u1", now_ms)) == "applied"
    assert await held_by(redis, "u1") == []
    assert await held_by(redis, "u2") == ["B1"]  # someone else's stay
    # The cap is free again for u1's next session.
    next_session = session("u1", entry_token("u1", ttl_s=800))
    for seat in ("C1", "C2", "C3", "C4"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=next_session)
        ).status == 200
    # A late notice about the earlier session does not release the new session's holds.
    assert await handler.handle(queue_record("expired", "u1", now_ms - 60_000)) == "applied"
    assert await held_by(redis, "u1") == ["C1", "C2", "C3", "C4"]
    assert await handler.handle(queue_record("expired", "u2", None)) == "applied"
    assert await held_by(redis, "u2") == []
    assert await handler.handle(SimpleNamespace(value=b"{}", topic="queue-events", offset=0)) == (
        "malformed"
    )


async def test_a_session_end_while_redis_is_gone_is_reported_not_raised() -> None:
    nothing_there = RedisSettings(
        url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.3, connect_timeout_s=0.3
    )
    async with open_redis(nothing_there) as redis:
        locks = SeatLocks(redis)
        with pytest.raises(SeatLocksUnavailable):
            await locks.release_all("demo", "u1")
        assert await SessionEndHandler(locks).handle(queue_record("left", "u1", 1)) == "failed"
