"""Where the console's figures come from: one small adapter per source, each read in one call.

- Tier 2: this service's own Redis, the admin API's ``figures`` script for every configured
  event, run concurrently.
- Tier 1: the VWR's ``counters`` table (one row per event), one paginated Scan.
- Seats: the booking database, one grouped query (read only).
- Rate-limit refusals: the limiters' usage hashes of the current UTC hour
  (``urr_common.ratelimit_usage``), one pipeline of ``HGET``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from urr_common.ratelimit_policies import POLICY_SET_KEY, PolicySet, default_policies
from urr_common.ratelimit_usage import ANONYMOUS_TENANT, BLOCKED, hour_start, usage_key
from urr_queue.console.model import SeatCounts, Tier1Row, Tier2Row
from urr_queue.members import is_event_id
from urr_queue.store import QueueStore

if TYPE_CHECKING:
    import asyncpg
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

#: Rows of the counters table one console reads at most (events, not visitors).
MAX_TIER1_EVENTS = 1_000


class Tier2Source:
    def __init__(self, store: QueueStore) -> None:
        self._store = store

    async def read(self) -> dict[str, Tier2Row]:
        ids = await self._store.event_ids()
        answers = await asyncio.gather(*(self._store.figures(i) for i in ids))
        return {
            event_id: Tier2Row.from_figures(figures)
            for event_id, figures in zip(ids, answers, strict=True)
            if figures is not None
        }


def _number(item: Mapping[str, Any], name: str) -> int:
    value = item.get(name)
    if isinstance(value, Mapping) and "N" in value:
        return int(float(value["N"]))
    return 0


def tier1_row(item: Mapping[str, Any]) -> tuple[str, Tier1Row] | None:
    """One counters row as the VWR writes it (``urr_vwr_lambda.store``), or None for the
    table's bookkeeping rows (the active-event registry) and anything unreadable."""
    event_id = item.get("eventId", {}).get("S")
    if not isinstance(event_id, str) or not is_event_id(event_id) or "nextPosition" not in item:
        return None
    return event_id, Tier1Row(
        is_active=bool(item.get("isActive", {}).get("BOOL", False)),
        next_position=_number(item, "nextPosition"),
        serving_counter=_number(item, "servingCounter"),
        updated_at_ms=_number(item, "updatedAt"),
    )


class Tier1Source:
    """The Tier-1 counters table through an aioboto3 DynamoDB client."""

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._db = dynamodb
        self.table = table

    async def read(self) -> dict[str, Tier1Row]:
        rows: dict[str, Tier1Row] = {}
        start: dict[str, Any] | None = None
        while len(rows) < MAX_TIER1_EVENTS:
            kwargs: dict[str, Any] = {"TableName": self.table}
            if start:
                kwargs["ExclusiveStartKey"] = start
            answer = await self._db.scan(**kwargs)
            for item in answer.get("Items", []):
                parsed = tier1_row(item)
                if parsed is not None:
                    rows[parsed[0]] = parsed[1]
            start = answer.get("LastEvaluatedKey")
            if not start:
                break
        return rows

    async def one(self, event_id: str) -> Tier1Row | None:
        answer = await self._db.get_item(
            TableName=self.table, Key={"eventId": {"S": event_id}}, ConsistentRead=True
        )
        parsed = tier1_row(answer.get("Item") or {})
        return parsed[1] if parsed else None


#: Seats per event: held = claimed by a reservation awaiting payment, sold = confirmed.
SEATS_QUERY = """
SELECT e.event_id, e.name,
       count(s.seat_id) AS total,
       count(s.seat_id) FILTER (WHERE r.status = 'awaiting_payment') AS held,
       count(s.seat_id) FILTER (WHERE r.status = 'confirmed') AS sold
  FROM booking_events e
  LEFT JOIN seats s ON s.event_id = e.event_id
  LEFT JOIN seat_claims c ON c.event_id = s.event_id AND c.seat_id = s.seat_id
  LEFT JOIN reservations r ON r.reservation_id = c.reservation_id
 GROUP BY e.event_id, e.name
"""


class SeatSource:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def read(self) -> dict[str, SeatCounts]:
        rows = await self._pool.fetch(SEATS_QUERY)
        return {
            row["event_id"]: SeatCounts(
                name=row["name"], total=row["total"], held=row["held"], sold=row["sold"]
            )
            for row in rows
        }


def usage_subjects(published: bytes | str | None) -> list[tuple[str | None, str]]:
    """(tenant, policy id) pairs whose usage the console sums: the published policies (the
    seed defaults until a set is published), for anonymous traffic and for each tenant that
    has policies of its own."""
    policies = list(default_policies())
    if published:
        # A set this code cannot read: the defaults still say something.
        with contextlib.suppress(orjson.JSONDecodeError, ValidationError):
            policies = list(PolicySet.model_validate(orjson.loads(published)).policies)
    tenants: list[str | None] = [None]
    tenants += sorted({p.tenant for p in policies if p.tenant is not None})
    return [
        (tenant, policy.id)
        for tenant in tenants
        for policy in policies
        if policy.tenant is None or policy.tenant == tenant
    ]


class RefusalSource:
    """Requests the rate limiters refused this UTC hour, by policy."""

    def __init__(self, redis: Redis | RedisCluster, clock: Any = time.time) -> None:
        self._redis = redis
        self._clock = clock

    async def read(self) -> dict[str, int]:
        published = await self._redis.hget(POLICY_SET_KEY, "set")
        subjects = usage_subjects(published)
        hour = hour_start(self._clock())
        pipe = self._redis.pipeline(transaction=False)
        for tenant, policy_id in subjects:
            pipe.hget(usage_key(tenant, policy_id, hour), BLOCKED)
        values = await pipe.execute()
        counts: dict[str, int] = {}
        for (tenant, policy_id), value in zip(subjects, values, strict=True):
            label = policy_id if tenant in (None, ANONYMOUS_TENANT) else f"{tenant}/{policy_id}"
            counts[label] = counts.get(label, 0) + int(value or 0)
        return counts
