"""The per-tenant rate-limit dashboard (``monitoring/grafana/urr-ratelimit-tenants.json``):
traffic, block ratio and quota use of each tenant, and the usage-snapshot scheduler's lag.

Generated like the overview dashboard (``dashboard.py``, whose panel rendering it shares), so
the tests hold its queries to the metric catalogue too. Tenant figures come from the snapshot
scheduler (``urr_ratelimit_admin.snapshots``), which reads the limiters' counters in Redis:
they are as fresh as its last round (``URR_SNAPSHOTS__EVERY_S``, 15 s).
"""

from __future__ import annotations

import json
from typing import Any

from urr_deploycheck.dashboard import (
    RATE,
    Panel,
    Query,
    _variable,
    datasource_variable,
    layout,
)

PATH = "monitoring/grafana/urr-ratelimit-tenants.json"
TENANT = 'tenant=~"$tenant"'
USAGE = "urr_ratelimit_usage_requests_total"


def _usage(result: str) -> str:
    return f'sum by (tenant) (rate({USAGE}{{{TENANT}, result=~"{result}"}}[{RATE}]))'


TENANTS = (
    Panel(
        "Traffic by tenant and result",
        (
            Query(
                f"sum by (tenant, result) (rate({USAGE}{{{TENANT}}}[{RATE}]))",
                "{{tenant}} {{result}}",
            ),
        ),
        unit="reqps",
        description="Decisions of the limiters per tenant ('-': callers without a tenant). "
        "shadow_blocked: refusals a shadow-mode policy only counted.",
    ),
    Panel(
        "Block ratio by tenant",
        (Query(f"{_usage('blocked')} / {_usage('allowed|blocked')}", "{{tenant}}"),),
        unit="percentunit",
        description="Share of the tenant's decisions refused (windows and quota).",
    ),
    Panel(
        "Quota used this month (share of the monthly quota)",
        (
            Query(
                f"max by (tenant) (urr_ratelimit_quota_used{{{TENANT}}}) "
                f"/ max by (tenant) (urr_ratelimit_quota_limit{{{TENANT}}})",
                "{{tenant}} used",
            ),
            Query(
                f"max by (tenant) (urr_ratelimit_quota_soft_limit{{{TENANT}}}) "
                f"/ max by (tenant) (urr_ratelimit_quota_limit{{{TENANT}}})",
                "{{tenant}} soft alert",
            ),
        ),
        unit="percentunit",
        description="Calendar month, UTC. UrrRateLimitQuotaSoftLimit fires at the soft line.",
    ),
    Panel(
        "Quota used this month (requests)",
        (
            Query(f"max by (tenant) (urr_ratelimit_quota_used{{{TENANT}}})", "{{tenant}} used"),
            Query(f"max by (tenant) (urr_ratelimit_quota_limit{{{TENANT}}})", "{{tenant}} quota"),
        ),
    ),
)

SCHEDULER = (
    Panel(
        "Usage snapshot lag",
        (Query("max(urr_ratelimit_snapshot_lag_seconds)", "lag"),),
        unit="s",
        description="How far PostgreSQL (the usage API) is behind the counters in Redis. "
        "UrrRateLimitSnapshotLag fires above 10 minutes.",
    ),
    Panel(
        "Snapshot rounds by outcome",
        (
            Query(
                f"sum by (outcome) (rate(urr_ratelimit_snapshot_rounds_total[{RATE}]))",
                "{{outcome}}",
            ),
        ),
        unit="ops",
    ),
    Panel(
        "Fail-open decisions (limits not enforced)",
        (
            Query(
                f'sum by (category) (rate(urr_ratelimit_decisions_total{{source="open"}}[{RATE}]))',
                "{{category}}",
            ),
        ),
        unit="reqps",
        description="UrrRateLimitFailOpenTime fires after 10 such minutes in an hour.",
    ),
)

ROWS = (("Tenants", TENANTS), ("Usage snapshots and fail-open", SCHEDULER))


def build() -> dict[str, Any]:
    return {
        "uid": "urr-ratelimit-tenants",
        "title": "URR: rate limits per tenant",
        "description": "Metric names: tools/deploycheck/src/urr_deploycheck/metrics.py",
        "tags": ["urr", "ratelimit"],
        "timezone": "utc",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {
            "list": [
                datasource_variable(),
                _variable("tenant", "Tenant", f"label_values({USAGE}, tenant)"),
            ]
        },
        "annotations": {"list": []},
        "panels": layout(ROWS),
        "links": [{"title": "Overview", "type": "link", "url": "/d/urr-overview"}],
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
