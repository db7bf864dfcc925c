"""``python -m urr_ratelimit_admin.snapshots``: the usage-snapshot scheduler (issue 18, item 5).

Every ``URR_SNAPSHOTS__EVERY_S`` one round, in one PostgreSQL transaction holding the
watermark row's lock (so a second scheduler, e.g. during a rolling update, waits and then
finds the work done):

1. read the watermark (first hour without final rows), the tenants, the policy set and the
   quotas;
2. plan the hours (``usage.plan_round``): closed hours since the watermark, then the open ones;
3. read every tenant x policy x hour usage hash and the quota counters from Redis, one
   pipeline per ``URR_SNAPSHOTS__BATCH_KEYS`` commands;
4. upsert the rows (absolute values; a row that would not change is not rewritten) and move
   the watermark past the closed hours; commit.

A crash before the commit leaves the watermark where it was: the next round writes the same
hours again from the same counters, so nothing is skipped and nothing counted twice.

Metrics (own listener, ``URR_METRICS__PORT``): the snapshot lag, rounds by outcome, each
tenant's quota used / limit / soft limit this month, and its traffic from the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge

from urr_common.clients import open_postgres, open_redis
from urr_common.logs import configure_logging, get_logger
from urr_common.ratelimit_usage import HOUR_S, hour_start, month_of
from urr_common.service import READINESS_KEY, create_service_app, run, serve, sleep_unless_stopped
from urr_common.settings import SettingsError, load_settings
from urr_ratelimit_admin import store
from urr_ratelimit_admin.settings import RatelimitSnapshotSettings, SnapshotSettings
from urr_ratelimit_admin.usage import (
    QuotaCounters,
    RoundPlan,
    UsageRow,
    plan_round,
    policies_by_tenant,
    read_requests,
    rows_from,
)

if TYPE_CHECKING:
    import asyncpg
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

_LOG = get_logger(__name__)

RESULTS = ("allowed", "blocked", "shadow_blocked")


@dataclass
class SnapshotMetrics:
    rounds: Counter
    quota_used: Gauge
    quota_limit: Gauge
    quota_soft_limit: Gauge
    requests: Counter
    #: Until when PostgreSQL holds what Redis counted (epoch seconds); the lag gauge is the
    #: time since, computed at scrape time so a stuck loop shows a growing lag.
    covered_until: float = field(default_factory=time.time)

    @classmethod
    def register(cls, registry: CollectorRegistry) -> SnapshotMetrics:
        metrics = cls(
            rounds=Counter(
                "urr_ratelimit_snapshot_rounds",
                "Snapshot rounds by outcome (ok, failed)",
                ["outcome"],
                registry=registry,
            ),
            quota_used=Gauge(
                "urr_ratelimit_quota_used",
                "Requests counted against the tenant's quota this calendar month (UTC)",
                ["tenant"],
                registry=registry,
            ),
            quota_limit=Gauge(
                "urr_ratelimit_quota_limit",
                "The tenant's monthly quota",
                ["tenant"],
                registry=registry,
            ),
            quota_soft_limit=Gauge(
                "urr_ratelimit_quota_soft_limit",
                "Quota use at which the tenant's soft alert fires (soft_alert_pct of the quota)",
                ["tenant"],
                registry=registry,
            ),
            requests=Counter(
                "urr_ratelimit_usage_requests",
                "Rate-limit decisions by tenant and result, from the usage counters in Redis",
                ["tenant", "result"],
                registry=registry,
            ),
        )
        lag = Gauge(
            "urr_ratelimit_snapshot_lag_seconds",
            "Time since the newest usage counted in Redis that PostgreSQL holds",
            registry=registry,
        )
        lag.set_function(lambda: max(0.0, time.time() - metrics.covered_until))
        return metrics


@dataclass
class _Seen:
    """What the traffic counter has already counted, per open tenant x policy x hour."""

    values: dict[tuple[str, str, int], tuple[int, int, int]] = field(default_factory=dict)
    primed: bool = False


class SnapshotWriter:
    """One round at a time; ``run_once`` is what the loop and the tests call."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis | RedisCluster,
        settings: SnapshotSettings,
        metrics: SnapshotMetrics,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._settings = settings
        self.metrics = metrics
        self._seen = _Seen()
        #: Monotonic time of the last completed round (readiness).
        self.last_ok = time.monotonic()

    async def redis_now(self) -> float:
        """Redis's clock: the decision scripts name their hours by it."""
        seconds, micros = await self._redis.time()
        return float(seconds) + micros / 1e6

    async def run_once(self, now: float | None = None) -> RoundPlan:
        async with self._pool.acquire() as conn, conn.transaction():
            if now is None:
                now = await self.redis_now()
            watermark = await _locked_watermark(conn, now, self._settings)
            plan = plan_round(
                watermark,
                now,
                grace_s=self._settings.close_grace_s,
                max_hours=self._settings.max_hours_per_round,
            )
            # Read in the round's transaction: policy_set() would open one of its own.
            policies = [
                (r["id"], r["tenant_id"])
                for r in await conn.fetch("SELECT id, tenant_id FROM rl_policies")
            ]
            tenants = [r["id"] for r in await conn.fetch("SELECT id FROM rl_tenants ORDER BY id")]
            quota_rows = await conn.fetch(
                "SELECT tenant_id, monthly_requests, soft_alert_pct FROM rl_quotas"
            )
            request = read_requests(plan, policies_by_tenant(policies, tenants), now)
            rows, counters = rows_from(request, await self._read(request.commands()))
            await _upsert(conn, rows)
            if plan.watermark != watermark:
                await conn.execute(
                    "UPDATE rl_usage_watermark SET next_hour = $1, updated_at = now()",
                    datetime.fromtimestamp(plan.watermark, UTC),
                )
        self._export(plan, rows, counters, quota_rows, now)
        self.last_ok = time.monotonic()
        return plan

    async def _read(self, commands: list[tuple[str, str]]) -> list[Any]:
        answers: list[Any] = []
        size = self._settings.batch_keys
        for start in range(0, len(commands), size):
            pipe = self._redis.pipeline(transaction=False)
            for command, key in commands[start : start + size]:
                if command == "HGETALL":
                    pipe.hgetall(key)
                else:
                    pipe.get(key)
            answers.extend(await pipe.execute())
        return answers

    def _export(
        self,
        plan: RoundPlan,
        rows: list[UsageRow],
        counters: QuotaCounters,
        quota_rows: list[Any],
        now: float,
    ) -> None:
        metrics = self.metrics
        metrics.covered_until = plan.covered_until
        metrics.rounds.labels("ok").inc()
        month = month_of(now)
        for gauge in (metrics.quota_used, metrics.quota_limit, metrics.quota_soft_limit):
            gauge.clear()  # tenants whose quota went away disappear
        for row in quota_rows:
            tenant, limit = row["tenant_id"], int(row["monthly_requests"])
            metrics.quota_used.labels(tenant).set(counters.get((tenant, month), 0))
            metrics.quota_limit.labels(tenant).set(limit)
            soft = math.ceil(limit * int(row["soft_alert_pct"]) / 100)
            metrics.quota_soft_limit.labels(tenant).set(soft)
        self._count_traffic(plan, rows)

    def _count_traffic(self, plan: RoundPlan, rows: list[UsageRow]) -> None:
        """Feed the per-tenant traffic counter with what the open hours gained since the last
        round. The first round only takes note: what was counted before the process started
        is not new traffic (nor are closed hours written while catching up)."""
        seen = self._seen
        open_hours = set(plan.refreshing)
        for row in rows:
            cell = (row.tenant, row.policy_id, row.hour)
            # An hour closing now was open last round: what it gained since still counts.
            if row.hour not in open_hours and cell not in seen.values:
                continue
            now_values = (row.allowed, row.blocked, row.shadow_blocked)
            before = seen.values.get(cell, (0, 0, 0) if seen.primed else now_values)
            for result, new, old in zip(RESULTS, now_values, before, strict=True):
                if new > old:
                    self.metrics.requests.labels(row.tenant, result).inc(new - old)
            seen.values[cell] = now_values
        seen.primed = seen.primed or bool(plan.refreshing)
        seen.values = {cell: v for cell, v in seen.values.items() if cell[2] >= plan.watermark}

    def failed(self, error: BaseException) -> None:
        self.metrics.rounds.labels("failed").inc()
        _LOG.warning("usage_snapshot_failed", error=f"{type(error).__name__}: {error}")


async def _locked_watermark(conn: store.Connection, now: float, settings: SnapshotSettings) -> int:
    """The watermark, locked until the round commits; made on the very first round."""
    first = hour_start(now) - settings.first_start_backfill_h * HOUR_S
    await conn.execute(
        "INSERT INTO rl_usage_watermark (next_hour) VALUES ($1) ON CONFLICT DO NOTHING",
        datetime.fromtimestamp(first, UTC),
    )
    value = await conn.fetchval("SELECT next_hour FROM rl_usage_watermark FOR UPDATE")
    return int(value.timestamp())


async def _upsert(conn: store.Connection, rows: list[UsageRow]) -> None:
    """Absolute values, each at least what is stored: a counter never falls within its hour,
    so a lower value means Redis lost it (a restart without its AOF), and the row keeps the
    figure it had. A row that would not change is not rewritten."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO rl_usage_snapshots AS s (tenant_id, policy_id, period_start, allowed,"
        " blocked, shadow_blocked, quota_used)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[],"
        " $5::bigint[], $6::bigint[], $7::bigint[])"
        " ON CONFLICT (tenant_id, policy_id, period_start) DO UPDATE SET"
        " allowed = GREATEST(s.allowed, EXCLUDED.allowed),"
        " blocked = GREATEST(s.blocked, EXCLUDED.blocked),"
        " shadow_blocked = GREATEST(s.shadow_blocked, EXCLUDED.shadow_blocked),"
        " quota_used = GREATEST(s.quota_used, EXCLUDED.quota_used)"
        " WHERE (s.allowed, s.blocked, s.shadow_blocked, s.quota_used) IS DISTINCT FROM"
        " (GREATEST(s.allowed, EXCLUDED.allowed), GREATEST(s.blocked, EXCLUDED.blocked),"
        " GREATEST(s.shadow_blocked, EXCLUDED.shadow_blocked),"
        " GREATEST(s.quota_used, EXCLUDED.quota_used))",
        [r.tenant for r in rows],
        [r.policy_id for r in rows],
        [datetime.fromtimestamp(r.hour, UTC) for r in rows],
        [r.allowed for r in rows],
        [r.blocked for r in rows],
        [r.shadow_blocked for r in rows],
        [r.quota_used for r in rows],
    )


async def snapshot_loop(writer: SnapshotWriter, every_s: float, stop: asyncio.Event) -> None:
    """Rounds until ``stop``; a failed round (Redis or PostgreSQL away) is retried next period."""
    while not stop.is_set():
        try:
            await writer.run_once()
        except Exception as exc:
            writer.failed(exc)
        await sleep_unless_stopped(stop, every_s)


def create_snapshot_app(
    settings: RatelimitSnapshotSettings,
    writer: SnapshotWriter,
    *,
    registry: CollectorRegistry,
) -> web.Application:
    """The health listener (``/health/ready`` fails when rounds stop completing); the loop
    starts and stops with it."""
    app = create_service_app(settings, registry=registry)
    stale_after = settings.snapshots.stale_after_s

    async def fresh() -> None:
        age = time.monotonic() - writer.last_ok
        if age > stale_after:
            raise RuntimeError(f"no snapshot round completed for {age:.0f}s")

    async def loop(_: web.Application) -> AsyncIterator[None]:
        app[READINESS_KEY].add_check("snapshots", fresh)
        stop = asyncio.Event()
        task = asyncio.create_task(snapshot_loop(writer, settings.snapshots.every_s, stop))
        yield
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(loop)
    return app


async def serve_snapshots(settings: RatelimitSnapshotSettings) -> None:
    async with open_postgres(settings.postgres) as pool, open_redis(settings.redis) as redis:
        await store.migrate(pool)
        registry = CollectorRegistry()
        writer = SnapshotWriter(pool, redis, settings.snapshots, SnapshotMetrics.register(registry))
        await serve(create_snapshot_app(settings, writer, registry=registry), settings.http)


def main() -> None:
    try:
        settings = load_settings(RatelimitSnapshotSettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log, service=settings.service_name)
    run(lambda: serve_snapshots(settings), use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
