"""Policies: validation (422-worthy errors), route patterns, and which policy governs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from urr_common.ratelimit_policies import (
    Policy,
    compile_route,
    default_policies,
    governing,
)


def _policy(**fields: Any) -> Policy:
    base: dict[str, Any] = {
        "id": "p1",
        "name": "p1",
        "route": "/api/v1/**",
        "windows": [{"limit": 10, "window_s": 60}],
    }
    return Policy.model_validate({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"windows": []}, "windows"),
        ({"windows": [{"limit": 0, "window_s": 60}]}, "limit"),
        ({"windows": [{"limit": -5, "window_s": 60}]}, "limit"),
        ({"windows": [{"limit": 5, "window_s": 31 * 86400 + 1}]}, "window_s"),
        ({"windows": [{"limit": 5, "window_s": 60}, {"limit": 9, "window_s": 60}]}, "differ"),
        ({"failure": "maybe"}, "failure"),
        ({"mode": "loud"}, "mode"),
        ({"route": "api/v1"}, "starts with"),
        ({"route": "/api/**/x"}, "may only end"),
        ({"route": "/api/v[1]"}, "segment"),
        ({"methods": ["FETCH"]}, "unknown methods"),
        ({"cost": 0}, "cost"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_policies_are_refused_naming_why(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        _policy(**fields)


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/v1/queue/*/status", "/api/v1/queue/e1/status", True),
        ("/api/v1/queue/*/status", "/api/v1/queue/e1/x/status", False),
        ("/api/v1/reservations/**", "/api/v1/reservations", True),
        ("/api/v1/reservations/**", "/api/v1/reservations/r/1", True),
        ("/api/v1/reservations/**", "/api/v1/reservationsX", False),
        ("/**", "/anything/at/all", True),
        ("/api/v1/auth/login", "/api/v1/auth/login", True),
        ("/api/v1/auth/login", "/api/v1/auth/login/x", False),
    ],
)
def test_route_patterns(pattern: str, path: str, matches: bool) -> None:
    assert (compile_route(pattern).match(path) is not None) is matches


def test_priority_then_tenant_then_specificity_decide() -> None:
    default = _policy(id="d", route="/api/v1/**", priority=0)
    narrower = _policy(id="n", route="/api/v1/queue/**", priority=0)
    tenant_own = _policy(id="t", tenant="acme", route="/api/v1/**", priority=0)
    urgent = _policy(id="u", route="/**", priority=5)
    posts_only = _policy(id="p", route="/api/v1/queue/**", methods=["POST"], priority=9)
    policies = [default, narrower, tenant_own, urgent, posts_only]
    assert governing(policies, None, "GET", "/api/v1/queue/e") == urgent
    assert governing(policies, "acme", "POST", "/api/v1/queue/e") == posts_only
    without_urgent = [default, narrower, tenant_own]
    # Equal priority: the tenant's own policy beats a narrower default one.
    assert governing(without_urgent, "acme", "GET", "/api/v1/queue/e") == tenant_own
    assert governing(without_urgent, "other", "GET", "/api/v1/queue/e") == narrower
    assert governing(without_urgent, None, "GET", "/elsewhere") is None


def test_the_seed_categories_are_the_default_policies() -> None:
    policies = default_policies()
    decided = {
        path: governing(policies, None, "GET", path)
        for path in ("/api/v1/auth/login", "/api/v1/queue/e/status", "/api/v1/seats/e", "/x")
    }
    assert {path: (p.name, p.windows[0].limit) for path, p in decided.items() if p} == {
        "/api/v1/auth/login": ("auth", 20),
        "/api/v1/queue/e/status": ("queue", 60),
        "/api/v1/seats/e": ("booking-seats", 10),
        "/x": ("general", 100),
    }
    assert decided["/api/v1/auth/login"] is not None
    assert decided["/api/v1/auth/login"].failure == "local"
