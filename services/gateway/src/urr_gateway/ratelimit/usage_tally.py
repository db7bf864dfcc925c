"""Usage counting for every decision: in memory per process, added to Redis once a second.

The snapshot scheduler reads per tenant x policy x UTC hour the hashes of
``urr_common.ratelimit_usage`` (allowed, blocked, shadow_blocked, near_limit). Counting them
with a command per decision would cost every request a Redis write (and, for a policy-less
decision, a key in another Cluster slot than its script's). Instead each limiter tallies its
decisions here and :class:`UsageWriter` adds them in one pipeline per flush (once a second by
default), taking the hour from Redis's clock: a hot tenant costs one ``HINCRBY`` per field a
second instead of one per request. Decisions without a tenant (browsers, callers without an
API key) count as ``ANONYMOUS_TENANT``. A process that dies loses at most one interval of
counts; a flush that fails keeps them for the next. Quotas are not counted here: the decision
script enforces them atomically.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from urr_common.ratelimit_usage import (
    ALLOWED,
    ANONYMOUS_TENANT,
    BLOCKED,
    NEAR_LIMIT,
    SHADOW_BLOCKED,
    USAGE_TTL_S,
    hour_start,
    usage_key,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from urr_gateway.ratelimit.window import Decision

#: envoy's convention, as in ``tenant_decision.lua``: above 80 % of a limit is near it.
NEAR_LIMIT_SHARE = 0.8

UsageCounts = dict[tuple[str, str, str], int]


class UsageTally:
    """Counts per (tenant, policy, usage field) since the last drain. Pure; no I/O."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        #: Policy-less decisions not yet turned into usage fields, by (category, allowed,
        #: would_allow, near): one dict update per decision, the fields made per drain.
        self._raw: dict[tuple[str, bool, bool, bool], int] = {}

    def count(
        self, tenant: str, policy: str, *, allowed: bool, would_allow: bool, near: bool
    ) -> None:
        """One decision: ``allowed`` it went through, ``would_allow`` its policy let it (a
        shadow policy lets through what it would refuse), ``near`` above 80 % of a limit."""
        counts = self._counts
        counts[(tenant, policy, ALLOWED if allowed else BLOCKED)] += 1
        if allowed and not would_allow:
            counts[(tenant, policy, SHADOW_BLOCKED)] += 1
        elif near and would_allow:
            counts[(tenant, policy, NEAR_LIMIT)] += 1

    def record(self, decision: Decision, *, shadow_refusal: bool) -> None:
        """A policy-less decision, counted for ``ANONYMOUS_TENANT`` under its category."""
        allowed = decision.allowed
        limit = decision.limit
        key = (
            decision.category,
            allowed or shadow_refusal,
            allowed,
            decision.source == "redis"
            and limit - decision.remaining > int(limit * NEAR_LIMIT_SHARE),
        )
        raw = self._raw
        raw[key] = raw.get(key, 0) + 1

    def _fold(self) -> None:
        """Turn the raw policy-less counts into usage fields (what ``count`` would add)."""
        raw, self._raw = self._raw, {}
        counts = self._counts
        for (category, allowed, would_allow, near), times in raw.items():
            counts[(ANONYMOUS_TENANT, category, ALLOWED if allowed else BLOCKED)] += times
            if allowed and not would_allow:
                counts[(ANONYMOUS_TENANT, category, SHADOW_BLOCKED)] += times
            elif near and would_allow:
                counts[(ANONYMOUS_TENANT, category, NEAR_LIMIT)] += times

    def drain(self) -> UsageCounts:
        """The counts so far, and start again from zero."""
        self._fold()
        counts, self._counts = dict(self._counts), Counter()
        return counts

    def restore(self, counts: UsageCounts) -> None:
        """Give back counts a flush could not write (added to any counted meanwhile)."""
        self._counts.update(counts)

    def __len__(self) -> int:
        self._fold()
        return len(self._counts)


class UsageWriter:
    """Adds drained counts to the hourly usage hashes: one ``TIME``, then one pipeline of
    ``HINCRBY`` (and one ``EXPIRE`` per hash) - plain commands, so a Redis Cluster pipeline
    sends each to its slot's node."""

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self._redis = redis

    async def write(self, counts: UsageCounts) -> None:
        if not counts:
            return
        seconds, _ = await self._redis.time()
        hour = hour_start(seconds)
        pipe = self._redis.pipeline(transaction=False)
        hashes: set[str] = set()
        for (tenant, policy, field), value in counts.items():
            key = usage_key(tenant, policy, hour)
            pipe.hincrby(key, field, value)
            hashes.add(key)
        for key in hashes:
            pipe.expire(key, USAGE_TTL_S + 3600)
        await pipe.execute()
