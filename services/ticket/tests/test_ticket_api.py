"""The ticket API on real Redis, PostgreSQL and SQS (moto)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_common.identity_testing import act_as, as_gateway
from urr_common.settings import RedisSettings
from urr_devstack.procs import free_port
from urr_ticket.app import AUDIENCE, create_app
from urr_ticket.appkeys import LOCKS_KEY, STORE_KEY
from urr_ticket.settings import TicketSettings
from urr_ticket.store import BookingStore
from urr_ticket_worker.booking import apply_command
from urr_ticket_worker.messages import parse_command
from urr_ticket_worker.settings import BookingSettings
from urr_ticket_worker.testing import Queues, sqs_client

pytestmark = pytest.mark.integration


def user(user_id: str) -> dict[str, str]:
    return act_as(user_id)


async def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    body: dict[str, Any] = await response.json()
    assert body["code"] == code
    return body


async def _sold(db: asyncpg.Pool, user_id: str, seat_id: str) -> None:
    """A confirmed reservation of ``seat_id`` by ``user_id``, as the outcome consumer writes."""
    rid = uuid.uuid4()
    await db.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
        " VALUES ($1, 'demo', $2, ARRAY[$3], 'confirmed')",
        rid,
        user_id,
        seat_id,
    )
    await db.execute("INSERT INTO seat_claims VALUES ('demo', $1, $2)", seat_id, rid)


async def test_catalog_is_public(client: Any) -> None:
    listing = await (await client.get("/api/v1/events")).json()
    assert [e["eventId"] for e in listing["events"]] == ["demo"]
    event = await (await client.get("/api/v1/events/demo")).json()
    assert event["seats"] == {"total": 100, "available": 100}
    await problem(await client.get("/api/v1/events/nope"), 404, "event_not_found")
    await problem(await client.get("/api/v1/events/..%2F"), 404, "event_not_found")


async def test_seat_map_shows_free_held_and_sold(client: Any, db: asyncpg.Pool) -> None:
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=user("u1"))).status == 200
    await _sold(db, "u2", "B1")
    seat_map = await (await client.get("/api/v1/seats/demo", headers=user("u1"))).json()
    states = {s["seatId"]: (s["state"], s["heldByYou"]) for s in seat_map["seats"]}
    assert len(states) == 100
    assert states["A1"] == ("held", True)
    assert states["B1"] == ("sold", False)
    assert states["C3"] == ("free", False)
    await problem(await client.get("/api/v1/seats/nope"), 404, "event_not_found")
    await problem(
        await client.post("/api/v1/seats/demo/B1/hold", headers=user("u3")), 409, "seat_sold"
    )


async def test_a_sold_seat_whose_hold_is_not_released_yet_is_not_held_by_you(
    client: Any, db: asyncpg.Pool
) -> None:
    # The outcome consumer records the sale, then releases the buyer's holds in Redis: in
    # between, the buyer's map shows the seat sold, never "held by you".
    assert (await client.post("/api/v1/seats/demo/D4/hold", headers=user("u1"))).status == 200
    await _sold(db, "u1", "D4")
    seat_map = await (await client.get("/api/v1/seats/demo", headers=user("u1"))).json()
    states = {s["seatId"]: (s["state"], s["heldByYou"]) for s in seat_map["seats"]}
    assert states["D4"] == ("sold", False)


async def test_a_known_event_without_seats_has_an_empty_map(client: Any, db: asyncpg.Pool) -> None:
    # The seat map asks for the event only when no seat came back: known is 200 and empty,
    # unknown is 404.
    await db.execute("INSERT INTO booking_events (event_id, name) VALUES ('bare', 'No seats')")
    seat_map = await (await client.get("/api/v1/seats/bare", headers=user("u1"))).json()
    assert seat_map == {"eventId": "bare", "seats": []}
    await problem(await client.get("/api/v1/seats/bare2"), 404, "event_not_found")


async def test_hold_needs_a_user_and_a_real_seat(client: Any) -> None:
    await problem(await client.post("/api/v1/seats/demo/A1/hold"), 401, "identity_required")
    await problem(
        await client.post("/api/v1/seats/demo/Z99/hold", headers=user("u1")), 404, "seat_not_found"
    )
    await problem(
        await client.post("/api/v1/seats/nope/A1/hold", headers=user("u1")), 404, "event_not_found"
    )
    await problem(
        await client.post("/api/v1/seats/demo/A1/hold", headers=act_as("bad user")),
        400,
        "bad_user_id",
    )


async def test_holding_again_keeps_the_hold_and_another_user_gets_409(client: Any) -> None:
    first = await (await client.post("/api/v1/seats/demo/A1/hold", headers=user("u1"))).json()
    await asyncio.sleep(0.05)
    again = await (await client.post("/api/v1/seats/demo/A1/hold", headers=user("u1"))).json()
    assert again["holdId"] == first["holdId"]
    assert abs(again["expiresAtMs"] - first["expiresAtMs"]) <= 1  # not renewed
    body = await problem(
        await client.post("/api/v1/seats/demo/A1/hold", headers=user("u2")), 409, "seat_held"
    )
    assert abs(body["expiresAtMs"] - first["expiresAtMs"]) <= 1
    await problem(
        await client.delete("/api/v1/seats/demo/A1/hold", headers=user("u2")), 409, "seat_not_held"
    )
    assert (await client.delete("/api/v1/seats/demo/A1/hold", headers=user("u1"))).status == 204
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=user("u2"))).status == 200


async def test_one_hundred_concurrent_holds_on_one_seat_have_one_winner(client: Any) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/v1/seats/demo/E5/hold", headers=user(f"user-{i}")) for i in range(100))
    )
    # On a loaded machine some of the 100 Redis connections opened at once can time out: those
    # holds answer 503 with Retry-After (never 500), and asked again they lose like the rest.
    statuses = []
    for i, response in enumerate(responses):
        if response.status == 503:
            await problem(response, 503, "seat_holds_unavailable")
            assert response.headers["Retry-After"] == "1"
            response = await client.post("/api/v1/seats/demo/E5/hold", headers=user(f"user-{i}"))
        statuses.append(response.status)
    assert statuses.count(200) == 1
    assert statuses.count(409) == 99
    seat_map = await (await client.get("/api/v1/seats/demo")).json()
    assert next(s for s in seat_map["seats"] if s["seatId"] == "E5")["state"] == "held"


async def received(moto_endpoint: str, queues: Queues) -> list[dict[str, Any]]:
    async with sqs_client(moto_endpoint) as sqs:
        response = await sqs.receive_message(
            QueueUrl=queues.url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
        )
    return list(response.get("Messages", []))


async def test_reserving_held_seats_queues_one_command_and_repeats_get_the_same_answer(
    client: Any, moto_endpoint: str, queues: Queues, db: asyncpg.Pool
) -> None:
    for seat in ("A1", "A2"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=user("u1"))
        ).status == 200
    answers = []
    for _ in range(3):
        response = await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["A2", "A1"]}, headers=user("u1")
        )
        assert response.status == 202
        answers.append(await response.json())
    assert len({a["reservationId"] for a in answers}) == 1
    assert answers[0]["status"] == "pending"
    rid = answers[0]["reservationId"]
    status = await (await client.get(f"/api/v1/reservations/demo/{rid}", headers=user("u1"))).json()
    assert status["status"] == "pending"
    assert status["seatIds"] == ["A2", "A1"]
    messages = await received(moto_endpoint, queues)
    assert len(messages) == 1  # FIFO deduplication by reservation id
    command = parse_command(messages[0]["Body"])
    assert str(command.reservation_id) == rid
    assert messages[0]["Attributes"]["MessageGroupId"] == "demo:u1"  # one buyer's order
    assert messages[0]["Attributes"]["MessageDeduplicationId"] == rid
    # Once the worker has moved it on, a repeat answers with the current status, sends nothing.
    await db.execute("UPDATE reservations SET status = 'awaiting_payment'")
    again = await client.post(
        "/api/v1/reservations/demo", json={"seatIds": ["A1", "A2"]}, headers=user("u1")
    )
    assert (await again.json())["status"] == "awaiting_payment"
    # Someone else cannot see it.
    await problem(
        await client.get(f"/api/v1/reservations/demo/{rid}", headers=user("u2")),
        404,
        "reservation_not_found",
    )


async def test_reserving_needs_your_own_holds_on_real_seats(client: Any) -> None:
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=user("u1"))).status == 200
    body = await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["A1", "A2"]}, headers=user("u2")
        ),
        409,
        "seat_not_held",
    )
    assert body["seatIds"] == ["A1", "A2"]
    await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["Q1"]}, headers=user("u1")
        ),
        404,
        "seat_not_found",
    )
    await problem(
        await client.post(
            "/api/v1/reservations/nope", json={"seatIds": ["A1"]}, headers=user("u1")
        ),
        404,
        "event_not_found",
    )
    await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["A1", "A1"]}, headers=user("u1")
        ),
        422,
        "duplicate_seat",
    )
    await problem(
        await client.post("/api/v1/reservations/demo", json={"seatIds": []}, headers=user("u1")),
        422,
        "validation_failed",
    )
    await problem(
        await client.post(
            "/api/v1/reservations/demo",
            data=b"{",
            headers={**user("u1"), "Content-Type": "application/json"},
        ),
        400,
        "malformed_json",
    )
    await problem(
        await client.post("/api/v1/reservations/demo", json={"seatIds": ["A1"]}),
        401,
        "identity_required",
    )


class CountingPool:
    """The real pool, counting the statements sent through it (what a route costs in
    PostgreSQL round trips)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.statements: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.pool, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute"):
            return method

        async def counted(query: str, *args: Any) -> Any:
            self.statements.append(query)
            return await method(query, *args)

        return counted


async def test_a_reservation_is_one_postgresql_statement_and_a_refusal_reads_the_catalog(
    client: Any, db: asyncpg.Pool
) -> None:
    store = client.app[STORE_KEY]
    counting = CountingPool(store.pool)
    store.pool = counting
    assert (await client.post("/api/v1/seats/demo/B1/hold", headers=user("u1"))).status == 200
    counting.statements.clear()
    response = await client.post(
        "/api/v1/reservations/demo", json={"seatIds": ["B1"]}, headers=user("u1")
    )
    assert response.status == 202
    assert len(counting.statements) == 1  # the catalog check and the pending row together
    counting.statements.clear()
    await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["B1"]}, headers=user("u2")
        ),
        409,
        "seat_not_held",
    )
    assert len(counting.statements) == 1  # the catalog, for a 404 before the 409
    assert await db.fetchval("SELECT count(*) FROM reservations") == 1


async def test_a_held_seat_gone_from_the_catalog_is_a_404_and_nothing_is_written(
    client: Any, moto_endpoint: str, queues: Queues, db: asyncpg.Pool
) -> None:
    for seat in ("C3", "C4"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=user("u1"))
        ).status == 200
    await db.execute("DELETE FROM seats WHERE event_id = 'demo' AND seat_id = 'C4'")
    body = await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["C3", "C4"]}, headers=user("u1")
        ),
        404,
        "seat_not_found",
    )
    assert body["seatIds"] == ["C4"]
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0
    assert await received(moto_endpoint, queues) == []
    # The seat still held alone goes through.
    response = await client.post(
        "/api/v1/reservations/demo", json={"seatIds": ["C3"]}, headers=user("u1")
    )
    assert response.status == 202


async def test_twenty_identical_reservations_at_once_are_one_row_and_one_command(
    client: Any, moto_endpoint: str, queues: Queues, db: asyncpg.Pool
) -> None:
    for seat in ("D1", "D2"):
        assert (
            await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=user("u1"))
        ).status == 200
    responses = await asyncio.gather(
        *(
            client.post(
                "/api/v1/reservations/demo", json={"seatIds": ["D2", "D1"]}, headers=user("u1")
            )
            for _ in range(20)
        )
    )
    answers = []
    for response in responses:
        assert response.status == 202, await response.text()
        answers.append(await response.json())
    assert len({a["reservationId"] for a in answers}) == 1
    assert {a["status"] for a in answers} == {"pending"}
    rows = await db.fetch("SELECT reservation_id, seat_ids, status FROM reservations")
    assert len(rows) == 1
    assert str(rows[0]["reservation_id"]) == answers[0]["reservationId"]
    assert list(rows[0]["seat_ids"]) == ["D2", "D1"]
    assert rows[0]["status"] == "pending"
    messages = await received(moto_endpoint, queues)
    assert len(messages) == 1  # SQS drops the copies by the reservation id


async def test_holds_go_over_the_lane_and_survive_redis_losing_its_scripts(
    client: Any, redis_url: str
) -> None:
    """The hold script and the hold reads use the pipelined lane; after ``SCRIPT FLUSH``
    (a Redis restart) the EVALSHA's NOSCRIPT is answered by loading the script again, not
    by a 503."""
    locks = client.app[LOCKS_KEY]
    assert locks._lane is not None
    assert (await client.post("/api/v1/seats/demo/F1/hold", headers=user("u1"))).status == 200
    redis = Redis.from_url(redis_url)
    try:
        await redis.script_flush()
    finally:
        await redis.aclose()
    first = await client.post("/api/v1/seats/demo/F2/hold", headers=user("u1"))
    assert first.status == 200, await first.text()
    await problem(
        await client.post("/api/v1/seats/demo/F2/hold", headers=user("u2")), 409, "seat_held"
    )
    holders = await locks.holders("demo", ["F1", "F2", "F3"])
    assert {seat: hold.owner for seat, hold in holders.items()} == {"F1": "u1", "F2": "u1"}
    response = await client.post(
        "/api/v1/reservations/demo", json={"seatIds": ["F1", "F2"]}, headers=user("u1")
    )
    assert response.status == 202


async def confirmed_reservation(db: asyncpg.Pool, owner: str) -> uuid.UUID:
    rid = uuid.uuid4()
    await db.execute(
        "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
        " VALUES ($1, 'demo', $2, ARRAY['J10'], 'confirmed')",
        rid,
        owner,
    )
    return rid


async def test_transfer_checks_the_recipient_in_the_users_table(
    client: Any, db: asyncpg.Pool, moto_endpoint: str, queues: Queues
) -> None:
    rid = await confirmed_reservation(db, "u1")
    url = f"/api/v1/reservations/demo/{rid}/transfer"
    # No users table yet (the auth schema is elsewhere): a clear 503, nothing queued.
    await problem(
        await client.post(url, json={"toUserId": "u2"}, headers=user("u1")),
        503,
        "user_directory_unavailable",
    )
    # The shape of auth's table (auth.users, uuid ids), created here as auth's migration would.
    await db.execute("CREATE SCHEMA auth")
    await db.execute("CREATE TABLE auth.users (id uuid PRIMARY KEY, email text)")
    friend = uuid.uuid4()
    await db.execute("INSERT INTO auth.users VALUES ($1, 'friend@example.com')", friend)
    await problem(
        await client.post(url, json={"toUserId": str(uuid.uuid4())}, headers=user("u1")),
        422,
        "recipient_not_found",
    )
    await problem(
        await client.post(url, json={"toUserId": "u1"}, headers=user("u1")), 422, "transfer_to_self"
    )
    await problem(
        await client.post(url, json={"toUserId": str(friend)}, headers=user("u9")),
        404,
        "reservation_not_found",
    )
    await problem(
        await client.post(url, json={"to": "x"}, headers=user("u1")), 422, "validation_failed"
    )
    assert await received(moto_endpoint, queues) == []
    response = await client.post(url, json={"toUserId": str(friend)}, headers=user("u1"))
    assert response.status == 202
    [message] = await received(moto_endpoint, queues)
    assert orjson.loads(message["Body"])["toUserId"] == str(friend)


async def test_cancel_queues_a_command_only_for_live_reservations(
    client: Any, db: asyncpg.Pool, moto_endpoint: str, queues: Queues
) -> None:
    rid = await confirmed_reservation(db, "u1")
    assert (
        await client.post(f"/api/v1/reservations/demo/{rid}/cancel", headers=user("u1"))
    ).status == 202
    [message] = await received(moto_endpoint, queues)
    assert orjson.loads(message["Body"])["type"] == "cancel"
    await db.execute("UPDATE reservations SET status = 'declined'")
    await problem(
        await client.post(f"/api/v1/reservations/demo/{rid}/cancel", headers=user("u1")),
        409,
        "not_cancellable",
    )
    await problem(
        await client.post("/api/v1/reservations/demo/not-a-uuid/cancel", headers=user("u1")),
        404,
        "reservation_not_found",
    )


async def test_stats_are_public_and_count_by_event(client: Any, db: asyncpg.Pool) -> None:
    await db.execute(
        "INSERT INTO event_stats (event_id, counter, value) VALUES ('demo', 'queue.admitted', 3)"
    )
    await confirmed_reservation(db, "u1")
    stats = await (await client.get("/api/v1/stats/demo")).json()
    assert stats["counters"] == {"queue.admitted": 3}
    assert stats["reservations"] == {"confirmed": 1}
    assert stats["seats"]["total"] == 100
    await problem(await client.get("/api/v1/stats/nope"), 404, "event_not_found")


async def test_sqs_down_is_a_503_and_nothing_is_recorded(
    aiohttp_client: Any, settings: TicketSettings, db: asyncpg.Pool
) -> None:
    from prometheus_client import CollectorRegistry

    from urr_ticket.app import create_app

    broken = settings.model_copy(
        update={"sqs": settings.sqs.model_copy(update={"queue_name": "missing.fifo"})}
    )
    client = await aiohttp_client(
        create_app(broken, registry=CollectorRegistry()), middlewares=(as_gateway(AUDIENCE),)
    )
    assert (await client.post("/api/v1/seats/demo/A1/hold", headers=user("u1"))).status == 200
    await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["A1"]}, headers=user("u1")
        ),
        503,
        "booking_queue_unavailable",
    )
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0
    ready = await client.get("/health/ready")
    assert ready.status == 503


async def test_a_declined_card_may_be_retried_on_the_same_hold_at_most_five_times(
    client: Any, db: asyncpg.Pool
) -> None:
    """Issue 21: attempt n+1 is a new reservation of the same holds, allowed only when
    attempt n was declined by the card issuer; attempt 6 does not exist."""
    assert (await client.post("/api/v1/seats/demo/B1/hold", headers=user("u1"))).status == 200

    async def attempt(n: int) -> Any:
        return await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["B1"], "attempt": n}, headers=user("u1")
        )

    first = await attempt(1)
    assert first.status == 202
    first_id = (await first.json())["reservationId"]
    await problem(await attempt(2), 409, "retry_not_allowed")  # attempt 1 is still pending
    await db.execute(
        "UPDATE reservations SET status = 'declined', reason = 'seat_unavailable'"
        " WHERE reservation_id = $1",
        uuid.UUID(first_id),
    )
    await problem(await attempt(2), 409, "retry_not_allowed")  # not a card decline
    ids = [first_id]
    for n in range(2, 6):
        await db.execute(
            "UPDATE reservations SET status = 'declined', reason = 'card_declined'"
            " WHERE reservation_id = $1",
            uuid.UUID(ids[-1]),
        )
        retried = await attempt(n)
        assert retried.status == 202, await retried.text()
        ids.append((await retried.json())["reservationId"])
    assert len(set(ids)) == 5  # each attempt is its own reservation
    await db.execute(
        "UPDATE reservations SET status = 'declined', reason = 'card_declined'"
        " WHERE reservation_id = $1",
        uuid.UUID(ids[-1]),
    )
    refused = await attempt(6)
    assert refused.status == 422
    # Someone else's hold is never retried on.
    await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["B1"], "attempt": 2}, headers=user("u2")
        ),
        409,
        "seat_not_held",
    )


async def test_a_failed_send_leaves_no_pending_row_and_the_retry_goes_through(
    aiohttp_client: Any, settings: TicketSettings, db: asyncpg.Pool, moto_endpoint: str
) -> None:
    """The pending row is written before the command is sent; when the send fails, the row
    goes again: the seats do not count towards the cap and the same request, retried once
    the queue is there, is queued and booked by the worker from the API's row."""
    from prometheus_client import CollectorRegistry

    from urr_ticket.app import create_app

    late = f"ticket-events-late-{uuid.uuid4().hex[:10]}.fifo"
    client = await aiohttp_client(
        create_app(
            settings.model_copy(
                update={"sqs": settings.sqs.model_copy(update={"queue_name": late})}
            ),
            registry=CollectorRegistry(),
        ),
        middlewares=(as_gateway(AUDIENCE),),
    )

    async def hold(seat: str) -> int:
        return int(
            (await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=user("u1"))).status
        )

    async def reserve(seats: list[str]) -> Any:
        return await client.post(
            "/api/v1/reservations/demo", json={"seatIds": seats}, headers=user("u1")
        )

    first = ["A1", "A2", "A3", "A4"]  # the demo event's cap: 4 seats
    assert [await hold(seat) for seat in first] == [200] * 4
    await problem(await reserve(first), 503, "booking_queue_unavailable")
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0
    # Were the failed request's row kept, its 4 seats would count: B1 would be a fifth.
    for seat in first:
        response = await client.delete(f"/api/v1/seats/demo/{seat}/hold", headers=user("u1"))
        assert response.status == 204
    second = ["B1", "B2", "B3", "B4"]
    assert [await hold(seat) for seat in second] == [200] * 4
    await problem(await reserve(second), 503, "booking_queue_unavailable")
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0

    async with sqs_client(moto_endpoint) as sqs:
        url = (await sqs.create_queue(QueueName=late, Attributes={"FifoQueue": "true"}))["QueueUrl"]
    retried = await reserve(second)
    assert retried.status == 202, await retried.text()
    rid = uuid.UUID((await retried.json())["reservationId"])
    assert await db.fetchval("SELECT status FROM reservations WHERE reservation_id = $1", rid) == (
        "pending"
    )
    [message] = await received(moto_endpoint, Queues(late, url, "", ""))
    command = parse_command(message["Body"])
    assert command.reservation_id == rid
    # The worker finds the API's row and moves it on (the order every request now has).
    assert await apply_command(db, message["MessageId"], command, BookingSettings()) == "applied"
    row = await db.fetchrow(
        "SELECT status, seat_ids FROM reservations WHERE reservation_id = $1", rid
    )
    assert row is not None
    assert (row["status"], list(row["seat_ids"])) == ("awaiting_payment", second)


async def test_a_failed_resend_keeps_the_row_an_earlier_request_queued(
    client: Any, db: asyncpg.Pool, moto_endpoint: str, queues: Queues
) -> None:
    """A repeated request whose send fails removes nothing it did not write: the first
    request's command is on the queue and its row stays ``pending``."""
    assert (await client.post("/api/v1/seats/demo/C1/hold", headers=user("u1"))).status == 200
    first = await client.post(
        "/api/v1/reservations/demo", json={"seatIds": ["C1"]}, headers=user("u1")
    )
    assert first.status == 202
    rid = (await first.json())["reservationId"]
    [message] = await received(moto_endpoint, queues)
    async with sqs_client(moto_endpoint) as sqs:
        await sqs.delete_queue(QueueUrl=queues.url)
    await problem(
        await client.post(
            "/api/v1/reservations/demo", json={"seatIds": ["C1"]}, headers=user("u1")
        ),
        503,
        "booking_queue_unavailable",
    )
    status = await (await client.get(f"/api/v1/reservations/demo/{rid}", headers=user("u1"))).json()
    assert status["status"] == "pending"
    assert str(parse_command(message["Body"]).reservation_id) == rid


async def test_a_command_whose_row_was_removed_is_still_booked(
    client: Any, db: asyncpg.Pool, moto_endpoint: str, queues: Queues
) -> None:
    """A send that failed from the API's side may still have reached SQS after the API
    removed its row: the worker then writes the reservation itself, once."""
    assert (await client.post("/api/v1/seats/demo/D1/hold", headers=user("u1"))).status == 200
    response = await client.post(
        "/api/v1/reservations/demo", json={"seatIds": ["D1"]}, headers=user("u1")
    )
    assert response.status == 202
    rid = uuid.UUID((await response.json())["reservationId"])
    [message] = await received(moto_endpoint, queues)
    assert await BookingStore(db).delete_pending(rid)
    assert not await BookingStore(db).delete_pending(rid)  # nothing left to remove
    command = parse_command(message["Body"])
    settings = BookingSettings()
    assert await apply_command(db, message["MessageId"], command, settings) == "applied"
    assert await apply_command(db, "another-delivery", command, settings) == "duplicate"
    assert await db.fetchval("SELECT status FROM reservations WHERE reservation_id = $1", rid) == (
        "awaiting_payment"
    )
    assert not await BookingStore(db).delete_pending(rid)  # the worker's row is never removed
    assert await db.fetchval("SELECT reservation_id FROM seat_claims WHERE seat_id = 'D1'") == rid


# --- Redis, where the holds live, gone or hung ---------------------------------------------
# Every route that reads or changes a hold answers 503 ``seat_holds_unavailable`` with
# ``Retry-After`` (never a 500) and writes nothing to PostgreSQL or SQS.

#: Short timeouts, so that a Redis that never answers is given up on quickly.
FAST_GIVE_UP = {"socket_timeout_s": 0.3, "connect_timeout_s": 0.3}


@pytest_asyncio.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A URL to a server that accepts connections and never answers (a hung Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


def _refused_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


async def _client(aiohttp_client: Any, settings: TicketSettings, redis_url: str) -> Any:
    settings = settings.model_copy(update={"redis": RedisSettings(url=redis_url, **FAST_GIVE_UP)})
    return await aiohttp_client(
        create_app(settings, registry=CollectorRegistry()), middlewares=(as_gateway(AUDIENCE),)
    )


async def _unavailable(response: Any) -> None:
    await problem(response, 503, "seat_holds_unavailable")
    assert response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("outage", ["refused", "silent"])
async def test_every_hold_route_answers_503_and_changes_nothing(
    outage: str,
    aiohttp_client: Any,
    settings: TicketSettings,
    moto_endpoint: str,
    queues: Queues,
    db: asyncpg.Pool,
    silent_redis: str,
) -> None:
    url = _refused_redis() if outage == "refused" else silent_redis
    client = await _client(aiohttp_client, settings, url)
    who = act_as("u1")
    await _unavailable(await client.post("/api/v1/seats/demo/A1/hold", headers=who))
    await _unavailable(await client.delete("/api/v1/seats/demo/A1/hold", headers=who))
    await _unavailable(await client.get("/api/v1/seats/demo", headers=who))
    await _unavailable(
        await client.post("/api/v1/reservations/demo", json={"seatIds": ["A1"]}, headers=who)
    )
    # What does not touch the holds still works.
    assert (await client.get("/api/v1/events/demo")).status == 200
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0
    assert await received(moto_endpoint, queues) == []


async def test_a_burst_of_holds_on_a_hung_redis_gets_only_503s(
    aiohttp_client: Any, settings: TicketSettings, db: asyncpg.Pool, silent_redis: str
) -> None:
    # More holds than the pool has connections: those waiting for a connection give up too.
    client = await _client(aiohttp_client, settings, silent_redis)
    responses = await asyncio.wait_for(
        asyncio.gather(
            *(
                client.post("/api/v1/seats/demo/B2/hold", headers=act_as(f"user-{i}"))
                for i in range(80)
            )
        ),
        timeout=30,
    )
    assert sorted({r.status for r in responses}) == [503]
    for response in responses:
        await _unavailable(response)
