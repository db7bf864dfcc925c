"""Usage of decisions without a tenant (browsers, callers without an API key), counted.

Tenant decisions count their usage inside ``tenant_decision.lua``. A policy-less decision's
keys carry the subject's hash tag (a user, an address), so its script cannot also touch the
anonymous usage hash (``{rl:-}``, another Cluster slot); and adding a counter command to the
hottest script would cost every request. Instead each limiter counts in memory and
:class:`AnonymousUsageWriter` adds the counts to Redis in one script call per flush (once a
second by default): the snapshot scheduler and the operator console then see browser traffic
and its refusals like any tenant's. A process that dies loses at most one interval of counts;
a flush that fails keeps them for the next one.
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from typing import TYPE_CHECKING

from urr_common.ratelimit_usage import (
    ALLOWED,
    ANONYMOUS_TENANT,
    BLOCKED,
    NEAR_LIMIT,
    SHADOW_BLOCKED,
    USAGE_TTL_S,
    usage_prefix,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from urr_gateway.ratelimit.window import Decision

#: envoy's convention, as in ``tenant_decision.lua``: above 80 % of a limit is near it.
NEAR_LIMIT_SHARE = 0.8


class UsageTally:
    """Counts per (policy, usage field) since the last drain. Pure; no I/O."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()

    def record(self, decision: Decision, *, shadow_refusal: bool) -> None:
        """Count one decision: ``shadow_refusal`` when a shadow policy let through a request
        its windows refused (counted as allowed and as shadow_blocked, like a tenant's)."""
        category = decision.category
        if shadow_refusal:
            self._counts[(category, ALLOWED)] += 1
            self._counts[(category, SHADOW_BLOCKED)] += 1
        elif decision.allowed:
            self._counts[(category, ALLOWED)] += 1
            used = decision.limit - decision.remaining
            if used > int(decision.limit * NEAR_LIMIT_SHARE) and not decision.degraded:
                self._counts[(category, NEAR_LIMIT)] += 1
        else:
            self._counts[(category, BLOCKED)] += 1

    def drain(self) -> dict[tuple[str, str], int]:
        """The counts so far, and start again from zero."""
        counts, self._counts = dict(self._counts), Counter()
        return counts

    def restore(self, counts: dict[tuple[str, str], int]) -> None:
        """Give back counts a flush could not write (added to any counted meanwhile)."""
        self._counts.update(counts)

    def __len__(self) -> int:
        return len(self._counts)


class AnonymousUsageWriter:
    """Adds drained counts to the anonymous tenant's hourly usage hashes (``usage_flush.lua``)."""

    def __init__(self, redis: Redis | RedisCluster) -> None:
        source = resources.files(__package__).joinpath("usage_flush.lua").read_text("utf-8")
        self._script = redis.register_script(source)
        self._prefix = usage_prefix(ANONYMOUS_TENANT)
        # Any key with the anonymous hash tag routes the call on a Redis Cluster.
        self._routing_key = self._prefix.rstrip(":")

    async def write(self, counts: dict[tuple[str, str], int]) -> None:
        if not counts:
            return
        args: list[str | int] = [self._prefix, USAGE_TTL_S]
        for (policy, field), count in sorted(counts.items()):
            args += [policy, field, count]
        await self._script(keys=[self._routing_key], args=args)
