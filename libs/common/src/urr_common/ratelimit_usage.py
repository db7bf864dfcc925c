"""Where the limiters count usage in Redis, and where the snapshot scheduler reads it.

The contract between the two sides (the decision path writes, the scheduler in
``urr_ratelimit_admin`` reads and upserts ``rl_usage_snapshots``), kept in one place so
neither side invents its own key.

Every key of one tenant carries the hash tag ``{rl:<tenant>}``: the decision script touches
the tenant's windows, its quota counter and its usage hash in one atomic call, and on a Redis
Cluster those keys must share a slot. Traffic without a tenant (browsers, anonymous callers)
is counted under ``ANONYMOUS_TENANT``.

Hours and months are UTC and come from Redis's clock in the scripts; the helpers here take
epoch seconds so scripts and tests compute the same names.
"""

from __future__ import annotations

from datetime import UTC, datetime

ANONYMOUS_TENANT = "-"
HOUR_S = 3600

#: Fields of a usage hash (``HINCRBY`` by the decision path).
ALLOWED = "allowed"
BLOCKED = "blocked"
SHADOW_BLOCKED = "shadow_blocked"
NEAR_LIMIT = "near_limit"
USAGE_FIELDS = (ALLOWED, BLOCKED, SHADOW_BLOCKED, NEAR_LIMIT)

#: How long usage hashes outlive their hour: long enough for a scheduler that was down a
#: day to catch up without gaps.
USAGE_TTL_S = 8 * 24 * HOUR_S


def tenant_tag(tenant: str | None) -> str:
    return "{rl:" + (tenant or ANONYMOUS_TENANT) + "}"


def hour_start(epoch_s: float) -> int:
    """Start of the UTC hour holding ``epoch_s``, as epoch seconds."""
    return int(epoch_s) // HOUR_S * HOUR_S


def usage_key(tenant: str | None, policy_id: str, hour_start_s: int) -> str:
    """Hash of ``USAGE_FIELDS`` for one tenant x policy x UTC hour."""
    return f"ratelimit:usage:{tenant_tag(tenant)}:{policy_id}:{hour_start_s}"


def month_of(epoch_s: float) -> str:
    """``YYYY-MM`` of the UTC calendar month holding ``epoch_s``."""
    return datetime.fromtimestamp(int(epoch_s), UTC).strftime("%Y-%m")


def quota_key(tenant: str, month: str) -> str:
    """Requests counted against a tenant's monthly quota in ``month`` (``YYYY-MM``)."""
    return f"ratelimit:quota:{tenant_tag(tenant)}:{month}"
