"""From Redis usage counters to hourly ``rl_usage_snapshots`` rows: the pure part.

Which hours a round writes (``plan_round``), which keys it reads (``read_requests``) and the
rows those answers make (``rows_from``) are plain functions over plain values; the scheduler
in ``snapshots.py`` does the I/O around them.

A row holds absolute values, never increments, so writing an hour again with the same
counters changes nothing. ``quota_used`` is the tenant's month-to-date quota counter (the
month holding the hour) when the row was last written; for a closed hour that is its final
write, within ``close_grace_s`` after the hour ended. Traffic without a tenant has no quota.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from urr_common.ratelimit_usage import (
    ALLOWED,
    ANONYMOUS_TENANT,
    BLOCKED,
    HOUR_S,
    SHADOW_BLOCKED,
    hour_start,
    month_of,
    quota_key,
    usage_key,
)


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """The hours one round writes, as epoch seconds of their starts."""

    #: Hours written for the last time: the watermark moves past them in the same commit.
    closing: tuple[int, ...]
    #: Hours still counting (the current one, and the one just ended during the grace period):
    #: refreshed every round, final later. Empty while catching up.
    refreshing: tuple[int, ...]
    #: The new watermark (first hour without its final rows).
    watermark: int
    #: Until when PostgreSQL holds what Redis counted once this round commits.
    covered_until: float

    @property
    def hours(self) -> tuple[int, ...]:
        return self.closing + self.refreshing


def plan_round(watermark: int, now: float, *, grace_s: int, max_hours: int) -> RoundPlan:
    """What to write when every hour before ``watermark`` is final and the time is ``now``.

    An hour ``h`` is final once ``now >= h + 1 h + grace_s``. At most ``max_hours`` final
    hours per round, oldest first, so a scheduler that was down a week catches up in short
    transactions; the open hours wait until it has caught up (they would be rewritten anyway).
    """
    first_open = hour_start(now - grace_s)
    end = min(first_open, watermark + max_hours * HOUR_S)
    closing = tuple(range(watermark, end, HOUR_S))
    new_watermark = max(watermark, end)
    if new_watermark < first_open:
        return RoundPlan(closing, (), new_watermark, float(new_watermark))
    refreshing = tuple(range(new_watermark, hour_start(now) + HOUR_S, HOUR_S))
    return RoundPlan(closing, refreshing, new_watermark, now)


@dataclass(frozen=True, slots=True)
class UsageCell:
    """One tenant x policy x hour: the usage hash to read."""

    tenant: str
    policy_id: str
    hour: int

    @property
    def key(self) -> str:
        return usage_key(self.tenant, self.policy_id, self.hour)


def policies_by_tenant(
    policies: Iterable[tuple[str, str | None]], tenants: Iterable[str]
) -> dict[str, tuple[str, ...]]:
    """The policies that can govern each tenant's traffic: the defaults and its own.

    ``policies`` are (id, tenant or None for a default). Anonymous traffic
    (``ANONYMOUS_TENANT``) is governed by the defaults alone.
    """
    policies = sorted(policies, key=lambda p: p[0])
    defaults = tuple(pid for pid, owner in policies if owner is None)
    out = {ANONYMOUS_TENANT: defaults}
    for tenant in tenants:
        own = tuple(pid for pid, owner in policies if owner == tenant)
        out[tenant] = defaults + own
    return out


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """Every Redis read of one round, in the order its answers come back."""

    cells: tuple[UsageCell, ...]
    #: (tenant, ``YYYY-MM``) of every quota counter read: the months of the round's hours
    #: and the current one (for the quota gauges).
    quotas: tuple[tuple[str, str], ...]

    def commands(self) -> list[tuple[str, str]]:
        """(command, key) pairs: ``HGETALL`` per cell, then ``GET`` per quota counter."""
        usage = [("HGETALL", cell.key) for cell in self.cells]
        return usage + [("GET", quota_key(tenant, month)) for tenant, month in self.quotas]


def read_requests(
    plan: RoundPlan, governing: Mapping[str, Sequence[str]], now: float
) -> ReadRequest:
    cells = tuple(
        UsageCell(tenant, policy_id, hour)
        for hour in plan.hours
        for tenant, policy_ids in sorted(governing.items())
        for policy_id in policy_ids
    )
    months = sorted({month_of(hour) for hour in plan.hours} | {month_of(now)})
    tenants = sorted(tenant for tenant in governing if tenant != ANONYMOUS_TENANT)
    quotas = tuple((tenant, month) for tenant in tenants for month in months)
    return ReadRequest(cells, quotas)


@dataclass(frozen=True, slots=True)
class UsageRow:
    tenant: str
    policy_id: str
    hour: int
    allowed: int
    blocked: int
    shadow_blocked: int
    quota_used: int


def _count(value: bytes | str | None) -> int:
    """A counter's value; anything that is not a non-negative integer counts as 0."""
    if value is None:
        return 0
    text = value.decode() if isinstance(value, bytes) else value
    return int(text) if text.isdigit() and len(text) <= 18 else 0


def _field(fields: Mapping[bytes | str, bytes | str], name: str) -> int:
    return _count(fields.get(name.encode(), fields.get(name)))


QuotaCounters = dict[tuple[str, str], int]


def rows_from(
    request: ReadRequest, answers: Sequence[object]
) -> tuple[list[UsageRow], QuotaCounters]:
    """The rows of the usage hashes that exist, and the quota counters by (tenant, month).

    A missing hash (nothing counted, or expired) makes no row: an existing row is never
    overwritten with nothing.
    """
    if len(answers) != len(request.cells) + len(request.quotas):
        raise ValueError("one answer per command expected")
    quota_answers = answers[len(request.cells) :]
    quotas: QuotaCounters = {
        pair: _count(answer)  # type: ignore[arg-type]
        for pair, answer in zip(request.quotas, quota_answers, strict=True)
    }
    rows = []
    for cell, answer in zip(request.cells, answers, strict=False):
        if not isinstance(answer, dict) or not answer:
            continue
        rows.append(
            UsageRow(
                tenant=cell.tenant,
                policy_id=cell.policy_id,
                hour=cell.hour,
                allowed=_field(answer, ALLOWED),
                blocked=_field(answer, BLOCKED),
                shadow_blocked=_field(answer, SHADOW_BLOCKED),
                quota_used=quotas.get((cell.tenant, month_of(cell.hour)), 0),
            )
        )
    return rows, quotas
