"""The usage-snapshot scheduler on real PostgreSQL and Redis: counters put into Redis under
the keys of ``urr_common.ratelimit_usage`` (as the decision path writes them), rounds run at
chosen times, rows and the watermark read back."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientSession
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from urr_common.ratelimit_policies import Policy
from urr_common.ratelimit_usage import (
    ALLOWED,
    ANONYMOUS_TENANT,
    BLOCKED,
    HOUR_S,
    SHADOW_BLOCKED,
    month_of,
    quota_key,
    usage_key,
)
from urr_common.service import start_metrics_listener
from urr_common.settings import SettingsError, load_settings
from urr_ratelimit_admin import store
from urr_ratelimit_admin.settings import RatelimitSnapshotSettings, SnapshotSettings
from urr_ratelimit_admin.snapshots import (
    SnapshotMetrics,
    SnapshotWriter,
    create_snapshot_app,
    snapshot_loop,
)
from urr_ratelimit_admin.usage import ReadRequest, UsageCell, plan_round, rows_from

OP = store.Actor("op-1", "req-1")
#: 2026-11-30 20:00 UTC: four hours before a month boundary.
H0 = int(datetime(2026, 11, 30, 20, tzinfo=UTC).timestamp())
GRACE = 120
ACME_POLICY = {
    "id": "acme-api",
    "tenant": "acme",
    "name": "acme-api",
    "route": "/api/v1/**",
    "windows": [{"limit": 100, "window_s": 60}],
}


# Planning (pure) -------------------------------------------------------------------------


def test_a_caught_up_round_closes_the_ended_hour_after_its_grace_and_refreshes_the_rest() -> None:
    during_grace = plan_round(H0 + HOUR_S, H0 + HOUR_S + 60, grace_s=GRACE, max_hours=24)
    assert during_grace.closing == ()
    assert during_grace.refreshing == (H0 + HOUR_S,)
    just_ended = plan_round(H0, H0 + HOUR_S + 60, grace_s=GRACE, max_hours=24)
    assert just_ended.closing == ()
    assert just_ended.refreshing == (H0, H0 + HOUR_S)
    after_grace = plan_round(H0, H0 + HOUR_S + GRACE, grace_s=GRACE, max_hours=24)
    assert after_grace.closing == (H0,)
    assert after_grace.refreshing == (H0 + HOUR_S,)
    assert after_grace.watermark == H0 + HOUR_S
    assert after_grace.covered_until == H0 + HOUR_S + GRACE


def test_catching_up_writes_at_most_max_hours_and_waits_with_the_open_ones() -> None:
    plan = plan_round(H0, H0 + 10 * HOUR_S + 5, grace_s=GRACE, max_hours=3)
    assert plan.closing == (H0, H0 + HOUR_S, H0 + 2 * HOUR_S)
    assert plan.refreshing == ()
    assert plan.covered_until == plan.watermark == H0 + 3 * HOUR_S
    # A clock that went back writes nothing and keeps the watermark.
    back = plan_round(H0 + 5 * HOUR_S, H0 + HOUR_S, grace_s=GRACE, max_hours=3)
    assert back.hours == ()
    assert back.watermark == H0 + 5 * HOUR_S


@given(
    st.lists(st.integers(min_value=0, max_value=5 * HOUR_S), min_size=1, max_size=30),
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=1800),
)
def test_successive_rounds_close_every_hour_exactly_once(
    steps: list[int], max_hours: int, grace: int
) -> None:
    watermark, now = H0, float(H0)
    closed: list[int] = []
    for step in steps:
        now += step
        plan = plan_round(watermark, now, grace_s=grace, max_hours=max_hours)
        assert not set(plan.closing) & set(plan.refreshing)
        assert all(h + HOUR_S + grace <= now for h in plan.closing)
        closed.extend(plan.closing)
        watermark = plan.watermark
        assert plan.covered_until <= now
    assert closed == list(range(H0, watermark, HOUR_S))  # no gap, no hour twice


def test_missing_hashes_make_no_row_and_garbage_counts_nothing() -> None:
    cells = (UsageCell("acme", "p", H0), UsageCell("acme", "q", H0))
    request = ReadRequest(cells, (("acme", month_of(H0)),))
    answer = {b"allowed": b"7", b"blocked": b"x", b"shadow_blocked": b"-3"}
    rows, quotas = rows_from(request, [answer, {}, b"42"])
    assert [(r.policy_id, r.allowed, r.blocked, r.shadow_blocked) for r in rows] == [("p", 7, 0, 0)]
    assert rows[0].quota_used == 42 == quotas[("acme", month_of(H0))]
    with pytest.raises(ValueError, match="one answer per command"):
        rows_from(request, [answer])


def test_settings_are_validated_with_the_variable_named() -> None:
    with pytest.raises(SettingsError, match="URR_SNAPSHOTS__EVERY_S"):
        load_settings(RatelimitSnapshotSettings, snapshots={"every_s": 0})
    with pytest.raises(SettingsError, match="URR_SNAPSHOTS__FIRST_START_BACKFILL_H"):
        load_settings(RatelimitSnapshotSettings, snapshots={"first_start_backfill_h": 24 * 9})
    settings = load_settings(RatelimitSnapshotSettings)
    assert (settings.http.port, settings.metrics_port) == (3041, 4041)


# Against PostgreSQL and Redis --------------------------------------------------------------


@pytest.fixture
async def env(rl_stores: tuple[asyncpg.Pool, Redis]) -> dict[str, Any]:
    pool, redis = rl_stores
    async with pool.acquire() as conn:
        await store.seed_default_policies(conn)
        await store.create_tenant(conn, OP, "acme", "Acme")
        await store.create_tenant(conn, OP, "beta", "Beta")
        await store.put_policy(conn, OP, Policy.model_validate(ACME_POLICY))
        await store.put_quota(conn, OP, "acme", 1000, 80)
    return {"pool": pool, "redis": redis}


def _unreachable() -> Redis:
    """A client of a Redis that is not there, failing at once (no retries)."""
    return Redis(port=1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))


def _writer(
    env: dict[str, Any], redis: Redis | None = None, **settings: Any
) -> tuple[SnapshotWriter, CollectorRegistry]:
    registry = CollectorRegistry()
    config = SnapshotSettings(close_grace_s=GRACE, first_start_backfill_h=0, **settings)
    writer = SnapshotWriter(
        env["pool"], redis or env["redis"], config, SnapshotMetrics.register(registry)
    )
    return writer, registry


async def _count(
    redis: Redis, tenant: str, policy: str, hour: int, allowed: int, blocked: int = 0
) -> None:
    """What the decision path does per decision, in bulk."""
    key = usage_key(tenant, policy, hour)
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(key, ALLOWED, allowed)
    if blocked:
        pipe.hincrby(key, BLOCKED, blocked)
    if tenant != ANONYMOUS_TENANT:
        pipe.incrby(quota_key(tenant, month_of(hour)), allowed)
    await pipe.execute()


async def _rows(env: dict[str, Any]) -> dict[tuple[str, str, int], tuple[int, ...]]:
    async with env["pool"].acquire() as conn:
        rows = await conn.fetch(
            "SELECT tenant_id, policy_id, period_start, allowed, blocked, shadow_blocked,"
            " quota_used FROM rl_usage_snapshots"
        )
    return {
        (r["tenant_id"], r["policy_id"], int(r["period_start"].timestamp())): (
            r["allowed"],
            r["blocked"],
            r["shadow_blocked"],
            r["quota_used"],
        )
        for r in rows
    }


async def _watermark(env: dict[str, Any]) -> int:
    async with env["pool"].acquire() as conn:
        value = await conn.fetchval("SELECT next_hour FROM rl_usage_watermark")
    return int(value.timestamp())


async def _start_at(env: dict[str, Any], hour: int) -> None:
    async with env["pool"].acquire() as conn:
        await conn.execute(
            "INSERT INTO rl_usage_watermark (next_hour) VALUES ($1)",
            datetime.fromtimestamp(hour, UTC),
        )


async def test_a_round_run_twice_writes_the_same_rows_and_rewrites_none(
    env: dict[str, Any],
) -> None:
    redis = env["redis"]
    await _start_at(env, H0)
    await _count(redis, "acme", "acme-api", H0, 40, blocked=2)
    await _count(redis, "acme", "general", H0 + HOUR_S, 5)
    await _count(redis, ANONYMOUS_TENANT, "queue", H0, 9, blocked=1)
    await redis.hincrby(usage_key("beta", "general", H0), SHADOW_BLOCKED, 3)
    now = H0 + HOUR_S + GRACE + 10
    writer, _ = _writer(env)
    await writer.run_once(now)
    first = await _rows(env)
    assert first == {
        ("acme", "acme-api", H0): (40, 2, 0, 45),
        ("acme", "general", H0 + HOUR_S): (5, 0, 0, 45),
        (ANONYMOUS_TENANT, "queue", H0): (9, 1, 0, 0),
        ("beta", "general", H0): (0, 0, 3, 0),
    }
    assert await _watermark(env) == H0 + HOUR_S
    async with env["pool"].acquire() as conn:
        versions = await conn.fetch("SELECT xmin::text FROM rl_usage_snapshots ORDER BY 1")
    await writer.run_once(now)
    await _writer(env)[0].run_once(now)  # another process, same hour: same answer
    assert await _rows(env) == first
    async with env["pool"].acquire() as conn:
        assert await conn.fetch("SELECT xmin::text FROM rl_usage_snapshots ORDER BY 1") == versions


async def test_the_open_hour_stays_fresh_and_a_lost_counter_does_not_lower_a_row(
    env: dict[str, Any],
) -> None:
    redis = env["redis"]
    await _start_at(env, H0)
    writer, _ = _writer(env)
    await _count(redis, "acme", "acme-api", H0, 10)
    await writer.run_once(H0 + 60)
    assert (await _rows(env))[("acme", "acme-api", H0)][0] == 10
    await _count(redis, "acme", "acme-api", H0, 5)
    await writer.run_once(H0 + 120)
    assert (await _rows(env))[("acme", "acme-api", H0)][0] == 15
    await redis.flushall()  # Redis restarted without its AOF
    await writer.run_once(H0 + 180)
    assert (await _rows(env))[("acme", "acme-api", H0)] == (15, 0, 0, 15)
    assert await _watermark(env) == H0


async def test_a_restart_mid_way_leaves_no_gap_and_counts_nothing_twice(
    env: dict[str, Any],
) -> None:
    redis, pool = env["redis"], env["pool"]
    await _start_at(env, H0)
    expected = {}
    for i in range(6):  # six hours across the month boundary, some traffic in each
        hour = H0 + i * HOUR_S
        await _count(redis, "acme", "acme-api", hour, 10 + i)
        await _count(redis, "beta", "general", hour, 1, blocked=i)
        expected[("acme", "acme-api", hour)] = 10 + i
        expected[("beta", "general", hour)] = 1
    now = H0 + 6 * HOUR_S + GRACE + 1
    first, _ = _writer(env, max_hours_per_round=2)
    await first.run_once(now)
    assert await _watermark(env) == H0 + 2 * HOUR_S
    # The next round dies after writing its rows, before its commit: nothing of it stays.
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE FUNCTION fail_round() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'killed mid-round'; END $$;"
            "CREATE TRIGGER fail_round BEFORE UPDATE ON rl_usage_watermark"
            " FOR EACH ROW EXECUTE FUNCTION fail_round()"
        )
    with pytest.raises(asyncpg.RaiseError, match="killed mid-round"):
        await first.run_once(now)
    assert {k[2] for k in await _rows(env)} == {H0, H0 + HOUR_S}
    # Redis away in the middle of a round: the same.
    unreachable = _unreachable()
    with pytest.raises(Exception, match=r"(?i)connect"):
        await _writer(env, redis=unreachable)[0].run_once(now)
    await unreachable.aclose()
    assert await _watermark(env) == H0 + 2 * HOUR_S
    async with pool.acquire() as conn:
        await conn.execute("DROP TRIGGER fail_round ON rl_usage_watermark")
    # A new process takes over from the watermark until it has caught up.
    second, _ = _writer(env, max_hours_per_round=2)
    plans = [await second.run_once(now) for _ in range(3)]
    assert [p.closing for p in plans] == [
        (H0 + 2 * HOUR_S, H0 + 3 * HOUR_S),
        (H0 + 4 * HOUR_S, H0 + 5 * HOUR_S),
        (),
    ]
    rows = await _rows(env)
    assert {k: v[0] for k, v in rows.items()} == expected
    assert rows[("beta", "general", H0 + 5 * HOUR_S)][1] == 5
    # quota_used: month-to-date of the hour's own month (November: 4 hours, December: 2).
    assert rows[("acme", "acme-api", H0 + 3 * HOUR_S)][3] == 10 + 11 + 12 + 13
    assert rows[("acme", "acme-api", H0 + 5 * HOUR_S)][3] == 14 + 15
    assert await _watermark(env) == H0 + 6 * HOUR_S


ROUNDS = "urr_ratelimit_snapshot_rounds_total"
TRAFFIC = "urr_ratelimit_usage_requests_total"


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_lag_quota_and_traffic_metrics(env: dict[str, Any]) -> None:
    redis = env["redis"]
    writer, registry = _writer(env, max_hours_per_round=1)
    metrics = writer.metrics
    now = await writer.redis_now()
    current = int(now) // HOUR_S * HOUR_S
    await _start_at(env, current - 3 * HOUR_S)
    await _count(redis, "acme", "acme-api", current, 850)
    # Catching up: the lag is the age of the watermark.
    await writer.run_once()
    lag = _sample(registry, "urr_ratelimit_snapshot_lag_seconds")
    assert lag is not None
    assert 2 * HOUR_S <= lag < 3 * HOUR_S
    for _ in range(3):
        await writer.run_once()
    lag = _sample(registry, "urr_ratelimit_snapshot_lag_seconds")
    assert lag is not None
    assert lag < 5
    assert _sample(registry, ROUNDS, outcome="ok") == 4
    assert _sample(registry, "urr_ratelimit_quota_used", tenant="acme") == 850
    assert _sample(registry, "urr_ratelimit_quota_limit", tenant="acme") == 1000
    assert _sample(registry, "urr_ratelimit_quota_soft_limit", tenant="acme") == 800
    assert _sample(registry, "urr_ratelimit_quota_limit", tenant="beta") is None
    # Traffic: what was there at start is not new; what comes after is.
    assert _sample(registry, TRAFFIC, tenant="acme", result="allowed") is None
    await _count(redis, "acme", "acme-api", current, 7, blocked=3)
    await _count(redis, "acme", "general", current, 2)
    await writer.run_once()
    allowed = _sample(registry, TRAFFIC, tenant="acme", result="allowed")
    blocked = _sample(registry, TRAFFIC, tenant="acme", result="blocked")
    assert (allowed, blocked) == (9, 3)
    text = generate_latest(registry).decode()
    assert "urr_ratelimit_snapshot_lag_seconds " in text
    covered = metrics.covered_until
    # Rounds failing (Redis away): counted, and the lag runs on from the last good round.
    unreachable = _unreachable()
    broken = SnapshotWriter(env["pool"], unreachable, SnapshotSettings(), metrics)
    stop = asyncio.Event()
    loop = asyncio.create_task(snapshot_loop(broken, 0.01, stop))
    try:
        for _ in range(200):
            if _sample(registry, ROUNDS, outcome="failed"):
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await loop
        await unreachable.aclose()
    assert _sample(registry, ROUNDS, outcome="failed")
    assert metrics.covered_until == covered


async def test_the_process_serves_health_and_the_lag_on_its_own_metrics_port(
    env: dict[str, Any], aiohttp_client: AiohttpClient
) -> None:
    await _start_at(env, int(time.time()) // HOUR_S * HOUR_S)
    settings = load_settings(
        RatelimitSnapshotSettings,
        http={"port": 0},
        metrics={"port": 0},
        snapshots={"every_s": 0.05, "stale_after_s": 60},
    )
    writer, registry = _writer(env)
    app = create_snapshot_app(settings, writer, registry=registry)
    client = await aiohttp_client(app)  # the loop runs with the app
    for _ in range(200):
        if _sample(registry, ROUNDS, outcome="ok"):
            break
        await asyncio.sleep(0.01)
    assert (await client.get("/health/ready")).status == 200
    assert (await client.get("/metrics")).status == 404  # never on the public port
    runner = await start_metrics_listener(app, settings.metrics, 0)
    assert runner is not None
    try:
        port = runner.addresses[0][1]
        async with ClientSession() as session:
            response = await session.get(f"http://127.0.0.1:{port}/metrics")
            text = await response.text()
        assert "urr_ratelimit_snapshot_lag_seconds " in text
    finally:
        await runner.cleanup()
    writer.last_ok -= 120  # no round completed for two minutes
    stale = await client.get("/health/ready")
    assert stale.status == 503
    assert "snapshots" in await stale.text()


def test_the_entry_point_refuses_a_bad_setting_naming_the_variable() -> None:
    environment = {**os.environ, "URR_SNAPSHOTS__BATCH_KEYS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "urr_ratelimit_admin.snapshots"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "URR_SNAPSHOTS__BATCH_KEYS" in done.stderr
