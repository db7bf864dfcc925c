"""The queue's behaviour end to end over HTTP, on one Redis and on a Redis Cluster.

Admission ticks are driven by the test (the app's loop is off) so every step is
deterministic; the loop itself is exercised in ``test_queue_concurrency.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import jwt
import pytest
from pydantic import ValidationError

from urr_common.clients import redis_client
from urr_common.settings import RedisSettings
from urr_common.tokens import KeySet, SigningKey, TokenSigner, TokenVerifier
from urr_queue.app import ADMISSION_LOOP, _lane_timeout
from urr_queue.context import QUEUE_CONTEXT
from urr_queue.keys import revoked_key
from urr_queue.settings import AdmissionSettings

EVENT = "concert-1"


async def configure(client: Any, admin_headers: dict[str, str], event: str = EVENT, **fields: Any):
    response = await client.put(f"/api/v1/admin/queue/{event}", json=fields, headers=admin_headers)
    assert response.status in (200, 201), await response.text()
    return await response.json()


async def enter(client: Any, headers: dict[str, str], event: str = EVENT, **kwargs: Any):
    return await client.post(f"/api/v1/queue/{event}/enter", headers=headers, **kwargs)


async def status(client: Any, headers: dict[str, str], event: str = EVENT):
    return await client.get(f"/api/v1/queue/{event}/status", headers=headers)


async def tick(client: Any):
    results = await client.app[ADMISSION_LOOP].tick_all()
    return {result.event_id: result for result in results}


def verifier_for(jwks: dict[str, Any]) -> TokenVerifier:
    return TokenVerifier(
        keys=KeySet.from_jwks(jwks),
        issuer="urr-queue",
        audience="urr-entry",
        required_claims=("iss", "aud", "exp", "sub", "jti", "evt"),
    )


async def test_first_come_first_served(redis_settings, queue_client, as_user, admin_headers):
    client = await queue_client(redis_settings)
    await configure(client, admin_headers, capacity=3, admit_per_second=1000, session_seconds=60)
    for index in range(6):
        response = await enter(client, as_user(f"user-{index}"))
        assert response.status == 201
        body = await response.json()
        assert body["status"] == "waiting"
        assert body["position"] == index + 1
        assert body["ahead"] == index
        assert body["queue_size"] == index + 1
        assert body["poll_after_seconds"] >= 1
    await asyncio.sleep(0.02)
    result = (await tick(client))[EVENT]
    assert [user for user, _ in result.admitted] == ["user-0", "user-1", "user-2"]
    assert result.active == 3
    assert result.waiting == 3
    first = await (await status(client, as_user("user-0"))).json()
    assert first["status"] == "admitted"
    fourth = await (await status(client, as_user("user-3"))).json()
    assert fourth == {**fourth, "status": "waiting", "position": 1, "ahead": 0, "queue_size": 3}
    # Capacity is full: another tick admits nobody.
    assert (await tick(client))[EVENT].admitted == []


async def test_entering_twice_keeps_the_first_place(
    redis_settings, queue_client, as_user, admin_headers
):
    client = await queue_client(redis_settings)
    await configure(client, admin_headers, capacity=1, admit_per_second=1000)
    for user in ("a", "b", "c"):
        assert (await enter(client, as_user(user))).status == 201
    again = await enter(client, as_user("a"))
    assert again.status == 200
    assert (await again.json())["position"] == 1
    again_c = await (await enter(client, as_user("c"))).json()
    assert again_c["position"] == 3
    assert again_c["queue_size"] == 3
    # Entering again once admitted answers the same admission and the same token.
    await asyncio.sleep(0.02)
    await tick(client)
    admitted = await (await enter(client, as_user("a"))).json()
    assert admitted["status"] == "admitted"
    admitted_again = await (await enter(client, as_user("a"))).json()
    assert admitted_again["entry_token"] == admitted["entry_token"]


async def test_admitted_user_gets_one_token_and_cookie(
    redis_settings, queue_client, as_user, admin_headers
):
    client = await queue_client(redis_settings, cookie_secure=True)
    await configure(client, admin_headers, capacity=5, admit_per_second=1000, session_seconds=120)
    user_id = "2b9f6f5e-8a0b-4d58-9a4c-0d3a3c0f5e11"  # a UUID, stored compactly
    await enter(client, as_user(user_id))
    await asyncio.sleep(0.02)
    await tick(client)
    first = await status(client, as_user(user_id))
    body = await first.json()
    assert body["status"] == "admitted"
    assert 110 <= body["expires_in_seconds"] <= 120
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"urr-entry-token={body['entry_token']}")
    for attribute in ("HttpOnly", "SameSite=Lax", "Secure", "Path=/"):
        assert attribute in cookie
    tokens = {body["entry_token"]}
    for _ in range(3):
        tokens.add((await (await status(client, as_user(user_id))).json())["entry_token"])
    assert len(tokens) == 1, "the token must not be re-minted on a poll"

    jwks = await (await client.get("/.well-known/jwks.json")).json()
    token = body["entry_token"]
    claims = verifier_for(jwks).verify(token)
    assert claims["sub"] == user_id
    assert claims["evt"] == EVENT
    assert claims["exp"] == body["expires_at"]
    assert jwt.get_unverified_header(token)["kid"] == "local-1"
    assert jwt.get_unverified_header(token)["alg"] == "ES256"


async def first_admitted_of_two(client: Any, as_user: Any, admin_headers: dict[str, str]) -> str:
    """One slot, two waiters: the first is admitted and asks for its token; its ``jti``."""
    await configure(client, admin_headers, capacity=1, admit_per_second=1000, session_seconds=300)
    await enter(client, as_user("first"))
    await enter(client, as_user("second"))
    await asyncio.sleep(0.02)
    await tick(client)
    token = (await (await status(client, as_user("first"))).json())["entry_token"]
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


async def test_leave_frees_the_slot_and_revokes_the_token(
    redis_settings, queue_client, as_user, admin_headers
):
    client = await queue_client(redis_settings)
    jti = await first_admitted_of_two(client, as_user, admin_headers)

    response = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("first"))
    assert response.status == 200
    assert (await response.json())["was"] == "admitted"
    assert 'urr-entry-token=""' in response.headers["Set-Cookie"]

    redis = redis_client(redis_settings)
    try:
        assert await redis.get(revoked_key("first", jti)) == b"1"
        ttl_ms = await redis.pttl(revoked_key("first", jti))
        assert 300_000 < ttl_ms <= 360_000
    finally:
        await redis.aclose()
    result = (await tick(client))[EVENT]
    assert [user for user, _ in result.admitted] == ["second"]
    gone = await status(client, as_user("first"))
    assert gone.status == 404
    assert (await gone.json())["code"] == "not_in_queue"


async def test_leave_revokes_and_frees_after_redis_lost_its_scripts(
    redis_settings, queue_client, as_user, admin_headers
):
    """Issue 22: on one Redis the revocation and the leave script go in one pipeline; when
    Redis has forgotten the script (a restart), the leave still happens, after the revocation."""
    client = await queue_client(redis_settings)
    jti = await first_admitted_of_two(client, as_user, admin_headers)
    redis = redis_client(redis_settings)
    try:
        await redis.script_flush()
        response = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("first"))
        assert response.status == 200
        assert (await response.json())["was"] == "admitted"
        assert await redis.get(revoked_key("first", jti)) == b"1"
    finally:
        await redis.aclose()
    result = (await tick(client))[EVENT]
    assert [user for user, _ in result.admitted] == ["second"]
    again = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("first"))
    assert (await again.json())["was"] == "none"


async def test_leaving_the_queue_while_waiting(
    redis_settings, queue_client, as_user, admin_headers
):
    client = await queue_client(redis_settings)
    await configure(client, admin_headers, mode="paused")
    for user in ("a", "b", "c"):
        await enter(client, as_user(user))
    left = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("b"))
    assert (await left.json())["was"] == "waiting"
    assert (await (await status(client, as_user("c"))).json())["position"] == 2
    nothing = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("b"))
    assert (await nothing.json())["was"] == "none"


async def test_sessions_end_on_time_however_often_polled(
    redis_settings, queue_client, as_user, admin_headers
):
    client = await queue_client(redis_settings)
    await configure(client, admin_headers, capacity=1, admit_per_second=1000, session_seconds=1)
    await enter(client, as_user("holder"))
    await enter(client, as_user("next"))
    await asyncio.sleep(0.02)
    await tick(client)
    started = time.monotonic()
    body = await (await status(client, as_user("holder"))).json()
    assert body["status"] == "admitted"
    while time.monotonic() - started < 1.3:  # poll hard: it must not renew the session
        await status(client, as_user("holder"))
        await asyncio.sleep(0.05)
    result = (await tick(client))[EVENT]
    assert result.expired == ["holder"]
    assert [user for user, _ in result.admitted] == ["next"]
    assert (await status(client, as_user("holder"))).status == 404


async def test_waiters_who_stop_polling_are_dropped(
    redis_settings, queue_client, as_user, admin_headers
):
    client = await queue_client(redis_settings)
    await configure(
        client,
        admin_headers,
        capacity=10,
        admit_per_second=1000,
        idle_timeout_seconds=6,
        mode="paused",
    )
    await enter(client, as_user("quiet"))
    await enter(client, as_user("active"))
    started = time.monotonic()
    while time.monotonic() - started < 7.2:
        response = await status(client, as_user("active"))
        body = await response.json()
        assert body["status"] == "waiting"
        assert body["poll_after_seconds"] == 2
        await asyncio.sleep(1.0)
    await configure(client, admin_headers, mode="queue")
    await asyncio.sleep(0.02)
    result = (await tick(client))[EVENT]
    assert [user for user, _ in result.dropped] == ["quiet"]
    assert [user for user, _ in result.admitted] == ["active"]
    assert (await status(client, as_user("quiet"))).status == 404


async def test_modes(redis_settings, queue_client, as_user, admin_headers):
    client = await queue_client(redis_settings)
    # passthrough: admitted at once, capacity not applied.
    await configure(client, admin_headers, capacity=1, mode="passthrough")
    for user in ("p1", "p2"):
        body = await (await enter(client, as_user(user))).json()
        assert body["status"] == "admitted"
        assert body["entry_token"]
    # paused: people may join, nobody is admitted.
    await configure(
        client, admin_headers, event="paused-1", capacity=5, admit_per_second=1000, mode="paused"
    )
    body = await (await enter(client, as_user("w1"), event="paused-1")).json()
    assert body["status"] == "waiting"
    assert body["eta_seconds"] is None
    await asyncio.sleep(0.02)
    assert (await tick(client))["paused-1"].admitted == []
    # closed: no new entries, those waiting are still admitted.
    await configure(client, admin_headers, event="paused-1", mode="closed")
    refused = await enter(client, as_user("late"), event="paused-1")
    assert refused.status == 403
    assert (await refused.json())["code"] == "queue_closed"
    assert (await enter(client, as_user("w1"), event="paused-1")).status == 200
    result = (await tick(client))["paused-1"]
    assert [user for user, _ in result.admitted] == ["w1"]
    # passthrough again: a waiter is admitted at the next poll.
    await configure(client, admin_headers, event="queue-2", mode="paused")
    await enter(client, as_user("q1"), event="queue-2")
    await configure(client, admin_headers, event="queue-2", mode="passthrough")
    assert (await (await status(client, as_user("q1"), event="queue-2")).json())["status"] == (
        "admitted"
    )


def tier1_token(signer: TokenSigner, *, event: str, position: int, rid: str, **extra: Any) -> str:
    return signer.sign(rid, {"evt": event, "rid": rid, "pos": position, **extra})


async def test_tier1_positions_order_the_queue(
    redis_settings, queue_client, as_user, admin_headers, tier1_signer
):
    # The positions leave gaps nobody fills: with the order hold off, the signed positions
    # alone order the queue (the hold is tested in test_queue_order.py).
    client = await queue_client(
        redis_settings, admission=AdmissionSettings(enabled=False, tier1_order_grace_s=0)
    )
    await configure(
        client,
        admin_headers,
        capacity=10,
        admit_per_second=1000,
        require_tier1_token=True,
        mode="paused",
    )
    arrivals = [("late", 50), ("early", 10), ("middle", 30)]
    for user, position in arrivals:
        token = tier1_token(
            tier1_signer, event=EVENT, position=position, rid=f"rid-{user}", uid=user
        )
        response = await enter(client, as_user(user), cookies={"urr-vwr-token": token})
        assert response.status == 201, await response.text()
    positions = {}
    for user, _ in arrivals:
        positions[user] = (await (await status(client, as_user(user))).json())["position"]
    assert positions == {"early": 1, "middle": 2, "late": 3}
    # A position in the query or the body is never read.
    token = tier1_token(tier1_signer, event=EVENT, position=40, rid="rid-cheat")
    cheat = await client.post(
        f"/api/v1/queue/{EVENT}/enter?position=1&vwrPosition=1",
        json={"position": 1},
        headers=as_user("cheat"),
        cookies={"urr-vwr-token": token},
    )
    assert (await cheat.json())["position"] == 3
    await configure(client, admin_headers, mode="queue")
    await asyncio.sleep(0.02)
    admitted = [user for user, _ in (await tick(client))[EVENT].admitted]
    assert admitted == ["early", "middle", "cheat", "late"]


async def test_tier1_refusals(
    redis_settings, queue_client, as_user, admin_headers, tier1_signer, tier1_key
):
    client = await queue_client(redis_settings)
    await configure(client, admin_headers, require_tier1_token=True)

    async def refused(user: str, token: str | None) -> str:
        cookies = {"urr-vwr-token": token} if token else None
        response = await enter(client, as_user(user), cookies=cookies)
        assert response.status == 403, await response.text()
        body = await response.json()
        assert body["code"] == "vwr_token_required"
        return str(body["reason"])

    assert await refused("u1", None) == "missing"
    forger = TokenSigner(SigningKey.generate("vwr-test-1"), "urr-vwr", "urr-vwr", 600)
    assert await refused("u1", tier1_token(forger, event=EVENT, position=1, rid="r1")) == (
        "invalid"
    )
    expired = tier1_signer.sign(
        "r1", {"evt": EVENT, "rid": "r1", "pos": 1}, ttl_s=60, now=time.time() - 600
    )
    assert await refused("u1", expired) == "expired"
    other_event = tier1_token(tier1_signer, event="other", position=1, rid="r1")
    assert await refused("u1", other_event) == "wrong_event"
    someone_else = tier1_token(tier1_signer, event=EVENT, position=1, rid="r1", uid="u2")
    assert await refused("u1", someone_else) == "wrong_user"
    no_position = tier1_signer.sign("r1", {"evt": EVENT, "rid": "r1", "pos": "1"})
    assert await refused("u1", no_position) == "bad_claims"
    # One Tier-1 place admits one user: the same pass cannot bring in a second one.
    shared = tier1_token(tier1_signer, event=EVENT, position=7, rid="r-shared")
    ok = await enter(client, as_user("owner"), cookies={"urr-vwr-token": shared})
    assert ok.status == 201
    thief = await enter(client, as_user("thief"), cookies={"urr-vwr-token": shared})
    assert thief.status == 403
    assert (await thief.json())["code"] == "tier1_pass_bound"
    # A token on an event that does not require one is ignored (the place is by arrival).
    await configure(client, admin_headers, event="open-1")
    plain = await enter(client, as_user("u9"), event="open-1", cookies={"urr-vwr-token": "garbage"})
    assert plain.status == 201


async def test_admin_api(redis_settings, queue_client, as_user, admin_headers):
    client = await queue_client(redis_settings)
    path = f"/api/v1/admin/queue/{EVENT}"
    assert (await client.get(path, headers=as_user("u"))).status == 403
    assert (await client.put(path, json={}, headers=as_user("u"))).status == 403
    missing = await client.get(path, headers=admin_headers)
    assert missing.status == 404
    created = await client.put(
        path, json={"capacity": 2, "admit_per_second": 500}, headers=admin_headers
    )
    assert created.status == 201
    changed = await client.patch(path, json={"session_seconds": 90}, headers=admin_headers)
    assert changed.status == 200
    config = (await changed.json())["config"]
    assert config == {
        "capacity": 2,
        "admit_per_second": 500.0,
        "session_seconds": 90,
        "idle_timeout_seconds": 60,
        "require_tier1_token": False,
        "mode": "queue",
        "queue_method": "fifo",
        "prequeue_start": None,
        "sale_start": None,
        "prequeue_commitment": None,
    }
    for bad in (
        {"capacity": 0},
        {"mode": "open"},
        {"queue_method": "lottery"},
        {"surprise": 1},
        {"session_seconds": "x"},
    ):
        response = await client.put(path, json=bad, headers=admin_headers)
        assert response.status == 422, bad
    for user in ("a", "b", "c", "d"):
        await enter(client, as_user(user))
    await asyncio.sleep(0.02)
    await tick(client)
    live = (await (await client.get(path, headers=admin_headers)).json())["live"]
    assert live["waiting"] == 2
    assert live["admitted"] == 2
    assert live["admitted_last_minute"] == 2
    assert live["oldest_waiter_age_seconds"] is not None
    assert live["oldest_waiter_age_seconds"] < 5
    assert live["eta_back_seconds"] >= 1
    toggled = await client.patch(path, json={"require_tier1_token": True}, headers=admin_headers)
    assert toggled.status == 409
    assert (await toggled.json())["code"] == "queue_not_empty"


async def test_bad_input_is_refused(redis_settings, queue_client, as_user, admin_headers):
    client = await queue_client(redis_settings)
    assert (await enter(client, as_user("u"), event="no-such-event")).status == 404
    assert (await status(client, as_user("u"), event="no-such-event")).status == 404
    leave = await client.post("/api/v1/queue/no-such-event/leave", headers=as_user("u"))
    assert leave.status == 404
    assert (await client.get("/api/v1/queue/no-such-event/capacity")).status == 404
    too_long = "x" * 65
    for event in (too_long, "bad.id", "bad%20id"):
        response = await enter(client, as_user("u"), event=event)
        assert response.status == 400, event
        assert (await response.json())["code"] == "invalid_event_id"
    await configure(client, admin_headers)
    anonymous = await client.post(f"/api/v1/queue/{EVENT}/enter")
    assert anonymous.status == 401
    assert anonymous.headers["Content-Type"] == "application/problem+json"
    assert (await status(client, as_user("a{b}"))).status == 400
    assert (await status(client, as_user("never-entered"))).status == 404


async def test_capacity_feed_needs_no_user(redis_settings, queue_client, as_user, admin_headers):
    client = await queue_client(redis_settings)
    await configure(client, admin_headers, capacity=4, admit_per_second=25)
    await enter(client, as_user("a"))
    feed = await (await client.get(f"/api/v1/queue/{EVENT}/capacity")).json()
    assert feed == {"waiting": 1, "admitted": 0, "capacity": 4, "admit_per_second": 25.0}
    await configure(client, admin_headers, mode="paused")
    paused = await (await client.get(f"/api/v1/queue/{EVENT}/capacity")).json()
    assert paused["admit_per_second"] == 0.0


async def test_ticket_service_completes_a_booking(
    redis_settings, queue_client, internal_of, as_user, admin_headers
):
    client = await queue_client(redis_settings)
    internal = await internal_of(client)
    await configure(client, admin_headers, capacity=1, admit_per_second=1000)
    await enter(client, as_user("buyer"))
    await asyncio.sleep(0.02)
    await tick(client)
    token = (await (await status(client, as_user("buyer"))).json())["entry_token"]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    path = f"/internal/v1/queue/{EVENT}/complete"
    done = await internal.post(path, json={"userId": "buyer"})
    assert await done.json() == {"released": True}
    again = await internal.post(path, json={"userId": "buyer"})
    assert await again.json() == {"released": False}
    assert (await internal.post(path, json={"userId": ""})).status == 422
    assert (
        await internal.post(path, data=b"{", headers={"Content-Type": "application/json"})
    ).status == 400
    redis = redis_client(redis_settings)
    try:
        assert await redis.exists(revoked_key("buyer", jti)) == 1
    finally:
        await redis.aclose()


async def test_many_events_tick_independently(redis_settings, queue_client, as_user, admin_headers):
    client = await queue_client(redis_settings)
    events = [f"event-{index}" for index in range(5)]
    for capacity, event in enumerate(events, start=1):
        await configure(
            client, admin_headers, event=event, capacity=capacity, admit_per_second=1000
        )
        for user in range(6):
            await enter(client, as_user(f"u{user}"), event=event)
    await asyncio.sleep(0.02)
    results = await tick(client)
    assert {event: len(results[event].admitted) for event in events} == {
        event: capacity for capacity, event in enumerate(events, start=1)
    }


async def test_readiness_reports_redis(
    queue_client, single_redis: RedisSettings, redis_server, as_user
):
    client = await queue_client(single_redis)
    assert (await client.get("/health/ready")).status == 200
    redis_server.stop()
    try:
        assert (await client.get("/health/ready")).status == 503
        down = await status(client, as_user("someone"))
        assert down.status == 503
        assert (await down.json())["code"] == "queue_unavailable"
        assert down.headers["Retry-After"] == "2"
    finally:
        redis_server.ensure_running()


async def test_deleting_an_event_resets_it(redis_settings, queue_client, as_user, admin_headers):
    client = await queue_client(redis_settings)
    await configure(client, admin_headers, capacity=1, admit_per_second=1000)
    await enter(client, as_user("held"))
    await enter(client, as_user("waiting"))
    await asyncio.sleep(0.02)
    await tick(client)
    token = (await (await status(client, as_user("held"))).json())["entry_token"]
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    path = f"/api/v1/admin/queue/{EVENT}"
    assert (await client.delete(path, headers=as_user("held"))).status == 403
    deleted = await client.delete(path, headers=admin_headers)
    assert await deleted.json() == {"event_id": EVENT, "deleted": True, "tokens_revoked": 1}
    assert (await client.delete(path, headers=admin_headers)).status == 404
    assert (await status(client, as_user("waiting"))).status == 404
    assert EVENT not in await tick(client)
    redis = redis_client(redis_settings)
    try:
        assert await redis.exists(revoked_key("held", jti)) == 1
    finally:
        await redis.aclose()
    # Created again, it starts empty.
    await configure(client, admin_headers)
    assert (await (await enter(client, as_user("waiting"))).json())["position"] == 1


async def test_the_redis_py_commands_stay_the_way_back(
    single_redis, queue_client, as_user, admin_headers
):
    """``URR_STORE_CLIENT=redis-py``: no lane, the scripts and the leave's pipeline through
    redis-py's commands, with the same outcomes."""
    client = await queue_client(single_redis, store_client="redis-py")
    assert client.app[QUEUE_CONTEXT].store._lane is None
    jti = await first_admitted_of_two(client, as_user, admin_headers)
    response = await client.post(f"/api/v1/queue/{EVENT}/leave", headers=as_user("first"))
    assert (await response.json())["was"] == "admitted"
    redis = redis_client(single_redis)
    try:
        assert await redis.get(revoked_key("first", jti)) == b"1"
    finally:
        await redis.aclose()
    result = (await tick(client))[EVENT]
    assert [user for user, _ in result.admitted] == ["second"]


async def test_the_lane_serves_one_redis_never_a_cluster(redis_settings, queue_client):
    client = await queue_client(redis_settings)
    lane = client.app[QUEUE_CONTEXT].store._lane
    assert (lane is None) is redis_settings.cluster


def test_the_store_client_switch_is_validated(make_settings, single_redis):
    with pytest.raises(ValidationError):
        make_settings(single_redis, store_client="hiredis")
    assert _lane_timeout(make_settings(single_redis)) == single_redis.socket_timeout_s
    assert _lane_timeout(make_settings(single_redis, store_client="redis-py")) is None
    # The lane keeps its connection: a pool of one would leave redis-py's commands none.
    one = single_redis.model_copy(update={"max_connections": 1})
    assert _lane_timeout(make_settings(one)) is None


async def test_a_frozen_redis_is_a_503_then_the_lane_reconnects(
    queue_client, single_redis, redis_server, as_user, admin_headers
):
    """Redis stops answering (SIGSTOP): the lane's connection is given up after the socket
    timeout and the request is the 503 a redis-py timeout gave, never a 500 or a hang; once
    Redis is back the next request is served on a new connection."""
    client = await queue_client(single_redis.model_copy(update={"socket_timeout_s": 0.3}))
    await configure(client, admin_headers, mode="paused")
    assert (await enter(client, as_user("u"))).status == 201
    assert redis_server.process is not None
    pid = redis_server.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        down = await status(client, as_user("u"))
        assert down.status == 503
        assert down.headers["Content-Type"] == "application/problem+json"
        assert (await down.json())["code"] == "queue_unavailable"
        assert down.headers["Retry-After"] == "2"
    finally:
        os.kill(pid, signal.SIGCONT)
    back = await status(client, as_user("u"))
    assert back.status == 200
    assert (await back.json())["position"] == 1
