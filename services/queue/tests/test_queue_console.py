"""The operator console's figures and controls: real Redis, PostgreSQL and DynamoDB (dynalite).

The Tier-1 rows are written by the VWR's own store and the seats by the booking schema's own
migrations, so the console is held to the formats the other services really write.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from urr_common.clients import redis_client
from urr_common.identity_testing import as_gateway
from urr_common.ratelimit_usage import BLOCKED, hour_start, usage_key
from urr_common.settings import AwsSettings, RedisSettings
from urr_queue.app import AUDIENCE, create_app
from urr_queue.console.history import ConsoleHistory
from urr_queue.console.model import AuditRecord, ConsoleChange, per_interval, series
from urr_queue.console.routes import CONSOLE
from urr_queue.console.settings import ConsoleSettings
from urr_queue.console.sources import usage_subjects
from urr_queue.tier1_marks import open_dynamodb
from urr_ticket.seed import DemoEvent, seed_catalog
from urr_ticket_worker.schema import migrate
from urr_vwr_lambda.settings import TableSettings
from urr_vwr_lambda.store import VwrStore

pytestmark = pytest.mark.integration

EVENT = "con-1"
FIGURES = "/api/v1/admin/console/figures"


@pytest_asyncio.fixture
async def booking(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """The booking schema with ``con-1`` (100 seats): A1 sold, A2 and A3 awaiting payment."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        await seed_catalog(pool, DemoEvent(event_id=EVENT, name="Console concert"))
        for status, seats in (("confirmed", ["A1"]), ("awaiting_payment", ["A2", "A3"])):
            rid = uuid.uuid4()
            await pool.execute(
                "INSERT INTO reservations (reservation_id, event_id, user_id, seat_ids, status)"
                " VALUES ($1, $2, 'u1', $3, $4)",
                rid,
                EVENT,
                seats,
                status,
            )
            for seat in seats:
                await pool.execute(
                    "INSERT INTO seat_claims (event_id, seat_id, reservation_id)"
                    " VALUES ($1, $2, $3)",
                    EVENT,
                    seat,
                    rid,
                )
        yield pool
    finally:
        await pool.close()


@pytest_asyncio.fixture
async def console(
    aiohttp_client: Any,
    make_settings: Any,
    single_redis: RedisSettings,
    local_aws: AwsSettings,
    tier1_tables: tuple[TableSettings, VwrStore],
    booking: asyncpg.Pool,
    postgres_dsn: str,
    admin_headers: dict[str, str],
) -> Any:
    tables, _ = tier1_tables
    settings = make_settings(
        single_redis,
        console=ConsoleSettings(
            tier1_counters_table=tables.counters,
            seats_dsn=postgres_dsn,
            cache_s=0.5,
            sample_interval_s=60,
        ),
    )
    app = create_app(
        settings,
        registry=CollectorRegistry(),
        dynamodb_factory=lambda: open_dynamodb(local_aws),
    )
    return await _with_event(
        await aiohttp_client(app, middlewares=(as_gateway(AUDIENCE),)), admin_headers
    )


@pytest_asyncio.fixture
async def plain_console(
    aiohttp_client: Any,
    make_settings: Any,
    single_redis: RedisSettings,
    admin_headers: dict[str, str],
) -> Any:
    """Tier 2 only (no Tier-1 table, no booking database): the controls need no more."""
    settings = make_settings(
        single_redis, console=ConsoleSettings(tier1_counters_table="", sample_interval_s=60)
    )
    client = await aiohttp_client(
        create_app(settings, registry=CollectorRegistry()), middlewares=(as_gateway(AUDIENCE),)
    )
    return await _with_event(client, admin_headers)


async def _with_event(client: Any, admin_headers: dict[str, str]) -> Any:
    """The client, once the Tier-2 event ``con-1`` exists (capacity 5, 2 admissions/s)."""
    answer = await client.put(
        f"/api/v1/admin/queue/{EVENT}",
        json={"capacity": 5, "admit_per_second": 2.0},
        headers=admin_headers,
    )
    assert answer.status == 201
    return client


async def _view(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    answer = await client.get(FIGURES, headers=headers)
    assert answer.status == 200, await answer.text()
    assert answer.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = await answer.json()
    return body


def _event(view: dict[str, Any], event_id: str) -> dict[str, Any]:
    [event] = [e for e in view["events"] if e["event_id"] == event_id]
    assert isinstance(event, dict)
    return event


async def test_one_view_joins_every_source(
    console: Any,
    tier1_tables: tuple[TableSettings, VwrStore],
    single_redis: RedisSettings,
    admin_headers: dict[str, str],
    as_user: Any,
) -> None:
    _, vwr = tier1_tables
    vwr.put_event(EVENT, is_active=True, batch_size=50, now_ms=int(time.time() * 1000))
    vwr.put_event("tier1-only", is_active=False, batch_size=10, now_ms=int(time.time() * 1000))
    for user in ("w1", "w2"):
        assert (await console.post(f"/api/v1/queue/{EVENT}/enter", headers=as_user(user))).ok
    # The limiter's usage hash for this hour (the contract of urr_common.ratelimit_usage).
    redis = console.app[CONSOLE].history._redis
    await redis.hset(usage_key(None, "queue", hour_start(time.time())), BLOCKED, 7)
    await redis.hset(usage_key(None, "auth", hour_start(time.time())), BLOCKED, 2)

    view = await _view(console, admin_headers)
    assert view["unavailable"] == []
    assert view["refresh_seconds"] <= 2
    event = _event(view, EVENT)
    assert event["name"] == "Console concert"
    assert event["tier1"]["is_active"] is True
    assert event["tier1"]["next_position"] == 0
    assert event["tier2"]["mode"] == "queue"
    assert event["tier2"]["waiting"] == 2
    assert event["tier2"]["capacity"] == 5
    assert event["seats"] == {"name": "Console concert", "total": 100, "held": 2, "sold": 1}
    assert _event(view, "tier1-only")["tier2"] is None  # known to Tier 1 only: still listed
    assert view["rate_limit"]["refused_this_hour"] == 9
    assert view["rate_limit"]["by_policy"]["queue"] == 7
    assert set(event["history"]) >= {"t1_waiting", "t2_waiting", "sold"}


async def test_a_pause_is_applied_shown_and_audited(
    plain_console: Any, admin_headers: dict[str, str]
) -> None:
    await _view(plain_console, admin_headers)  # a cached view must not hide the change
    answer = await plain_console.post(
        f"/api/v1/admin/console/events/{EVENT}/changes",
        json={"mode": "paused"},
        headers=admin_headers,
    )
    assert answer.status == 200, await answer.text()
    record = await answer.json()
    assert record["before"] == {"mode": "queue"}
    assert record["after"] == {"mode": "paused"}
    assert record["actor"] == "admin-1"  # the asserted admin (conftest's ADMIN_HEADERS)
    assert record["at_ms"] > 0
    assert _event(await _view(plain_console, admin_headers), EVENT)["tier2"]["mode"] == "paused"

    answer = await plain_console.post(
        f"/api/v1/admin/console/events/{EVENT}/changes",
        json={"capacity": 9, "admit_per_second": 0.5},
        headers=admin_headers,
    )
    assert (await answer.json())["before"] == {"capacity": 5, "admit_per_second": 2.0}
    trail = await (
        await plain_console.get("/api/v1/admin/console/audit", headers=admin_headers)
    ).json()
    assert [r["after"] for r in trail["records"]] == [
        {"capacity": 9, "admit_per_second": 0.5},
        {"mode": "paused"},
    ]
    admin = await (
        await plain_console.get(f"/api/v1/admin/queue/{EVENT}", headers=admin_headers)
    ).json()
    assert admin["config"]["mode"] == "paused"
    assert admin["config"]["capacity"] == 9


BAD_CHANGES = [
    (b"{}", 422),
    (b'{"mode": "sleeping"}', 422),
    (b'{"capacity": 0}', 422),
    (b'{"capacity": 5, "colour": "red"}', 422),
    (b'{"admit_per_second": -1}', 422),
    (b"[1]", 400),
    (b"not json", 400),
    (b'{"waiting_room_active": true}', 409),  # no Tier-1 admin URL in these settings
]


async def test_bad_changes_change_nothing(
    plain_console: Any, admin_headers: dict[str, str]
) -> None:
    for body, status in BAD_CHANGES:
        answer = await plain_console.post(
            f"/api/v1/admin/console/events/{EVENT}/changes",
            data=body,
            headers={**admin_headers, "Content-Type": "application/json"},
        )
        assert answer.status == status, body
        assert answer.content_type == "application/problem+json"
    event = _event(await _view(plain_console, admin_headers), EVENT)
    assert (event["tier2"]["mode"], event["tier2"]["capacity"]) == ("queue", 5)
    trail = await (
        await plain_console.get("/api/v1/admin/console/audit", headers=admin_headers)
    ).json()
    assert trail["records"] == []


async def test_only_admins_and_only_known_events(
    plain_console: Any, admin_headers: dict[str, str], as_user: Any
) -> None:
    for path in (FIGURES, "/admin/console", "/admin/console/console.js"):
        answer = await plain_console.get(path, headers=as_user("u1"))
        assert answer.status == 403, path
    answer = await plain_console.post(
        "/api/v1/admin/console/events/nope/changes", json={"mode": "paused"}, headers=admin_headers
    )
    assert answer.status == 404
    assert (await plain_console.get("/admin/console/other.js", headers=admin_headers)).status == 404
    page = await plain_console.get("/admin/console", headers=admin_headers)
    assert page.status == 200
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for limit in ("0", "201", "x", "%C2%B2"):  # "²" is a digit to str.isdigit, not to int()
        bad = await plain_console.get(
            f"/api/v1/admin/console/audit?limit={limit}", headers=admin_headers
        )
        assert bad.status == 400, limit


async def test_one_replica_samples_each_period(console: Any, admin_headers: dict[str, str]) -> None:
    aggregator = console.app[CONSOLE]
    redis = aggregator.history._redis
    # The background sampler's first point (taken maybe before the event existed) is
    # forgotten, so this test's points are the only ones.
    deadline = time.monotonic() + 5
    while not await redis.exists("urr:console:refusals"):
        assert time.monotonic() < deadline, "the background sampler never ran"
        await asyncio.sleep(0.02)
    await redis.delete(*await redis.keys("*console:*"))
    assert await aggregator.sample_once() is True
    assert await aggregator.sample_once() is False  # the same (60 s) period: another replica
    history = _event(await _view(console, admin_headers), EVENT)["history"]
    assert history["t2_waiting"] == [0]
    assert history["sold"] == [1]
    assert history["held"] == [2]


# --- pure parts -------------------------------------------------------------------------


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["mode", "capacity", "admit_per_second", "waiting_room_active", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
        max_size=4,
    )
)
def test_a_change_is_either_valid_or_refused(body: dict[str, Any]) -> None:
    try:
        change = ConsoleChange.model_validate(body)
    except ValidationError:
        return
    assert "x" not in body
    named = {k for k, v in body.items() if v is not None}
    assert named, "an empty change must be refused"
    patch = change.tier2_patch()
    if patch is not None:
        assert patch.capacity is None or patch.capacity >= 1
        assert patch.admit_per_second is None or patch.admit_per_second > 0


def test_history_series_and_counter_deltas() -> None:
    samples = [{"t": 3, "a": 5}, {"t": 2, "a": 2}, {"t": 1}]  # newest first, as stored
    assert series(samples, ["a"]) == {"a": [None, 2, 5]}
    assert per_interval([None, 2, 5, 1]) == [None, None, 3, 1]  # 1: the hour rolled over


def test_usage_subjects_follow_the_published_policies() -> None:
    published = orjson.dumps(
        {
            "version": 3,
            "policies": [
                {
                    "id": "all",
                    "name": "all",
                    "route": "/**",
                    "windows": [{"limit": 5, "window_s": 60}],
                },
                {
                    "id": "acme-q",
                    "tenant": "acme",
                    "name": "acme-q",
                    "route": "/api/v1/queue/**",
                    "windows": [{"limit": 5, "window_s": 60}],
                },
            ],
        }
    )
    assert usage_subjects(published) == [(None, "all"), ("acme", "all"), ("acme", "acme-q")]
    assert (None, "general") in usage_subjects(None)
    assert (None, "general") in usage_subjects(b"{broken")


async def test_history_and_audit_on_one_redis_and_on_a_cluster(
    redis_settings: RedisSettings,
) -> None:
    client = redis_client(redis_settings)
    try:
        history = ConsoleHistory(client, points=3, interval_s=1.0)
        now = await history.now_ms()
        assert abs(now - time.time() * 1000) < 5_000
        for step in range(4):
            samples = {"e-a": {"t2_waiting": step}, "e-b": {"t2_waiting": 10 + step}}
            await history.push(samples, refusals=step, at_ms=now + step)
        rings, refusals = await history.read(["e-a", "e-b", "e-none"])
        assert [s["t2_waiting"] for s in rings["e-a"]] == [3, 2, 1]  # newest first, trimmed
        assert [s["t2_waiting"] for s in rings["e-b"]] == [13, 12, 11]
        assert rings["e-none"] == []
        assert [s["refused"] for s in refusals] == [3, 2, 1]
        assert await history.claim_period(7) is True
        assert await history.claim_period(7) is False
        record = AuditRecord(now, "admin-1", "e-a", {"mode": "queue"}, {"mode": "paused"}, "r1")
        await history.audit(record, keep=100)
        [stored] = await history.audit_trail(10)
        assert {k: v for k, v in stored.items() if k != "id"} == record.to_json()
    finally:
        await client.aclose()


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
HTTP_FUZZ = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@HTTP_FUZZ
@given(
    body=st.dictionaries(
        st.one_of(
            st.sampled_from(["mode", "capacity", "admit_per_second", "waiting_room_active"]),
            st.text(max_size=10),
        ),
        JSON_VALUES,
        max_size=3,
    ),
    event=st.one_of(st.just(EVENT), st.text(min_size=1, max_size=70)),
    limit=st.text(max_size=6),
)
async def test_fuzzed_changes_are_answered_cleanly_and_refusals_change_nothing(
    plain_console: Any, admin_headers: dict[str, str], body: Any, event: str, limit: str
) -> None:
    from urllib.parse import quote

    audit = "/api/v1/admin/console/audit"  # read with limit=200: more than the examples
    before = await (await plain_console.get(f"{audit}?limit=200", headers=admin_headers)).json()
    answer = await plain_console.post(
        f"/api/v1/admin/console/events/{quote(event, safe='')}/changes",
        json=body,
        headers=admin_headers,
    )
    assert answer.status < 500
    after = await (await plain_console.get(f"{audit}?limit=200", headers=admin_headers)).json()
    if answer.status == 200:
        assert len(after["records"]) == len(before["records"]) + 1
    else:
        assert answer.content_type == "application/problem+json"
        assert after == before
    listed = await plain_console.get(f"{audit}?limit={quote(limit)}", headers=admin_headers)
    assert listed.status in (200, 400)
