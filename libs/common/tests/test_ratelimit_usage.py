from __future__ import annotations

from datetime import UTC, datetime

from urr_common.ratelimit_usage import (
    ANONYMOUS_TENANT,
    hour_start,
    month_of,
    quota_key,
    tenant_tag,
    usage_key,
)


def test_keys_of_one_tenant_share_a_hash_tag() -> None:
    tag = tenant_tag("acme")
    assert tag in usage_key("acme", "p1", 3600)
    assert tag in quota_key("acme", "2026-12")
    assert tenant_tag(None) == tenant_tag(ANONYMOUS_TENANT)


def test_hour_and_month_boundaries_are_utc() -> None:
    last_second = int(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC).timestamp())
    assert month_of(last_second) == "2026-11"
    assert month_of(last_second + 1) == "2026-12"
    assert hour_start(last_second) == last_second + 1 - 3600
    assert hour_start(last_second + 1) == last_second + 1
