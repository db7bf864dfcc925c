"""The routing table as data: which upstream, and what each route asks of a request."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from urr_gateway.paths import normalise_path
from urr_gateway.routing import ROUTES, RouteMatch, Upstream, match_route

RL_ADMIN = Upstream.RATELIMIT_ADMIN
LOG = Upstream.ADMISSION_LOG
ADMIN = "admin"


def _match(path: str) -> RouteMatch | None:
    return match_route(normalise_path(path).segments)


@pytest.mark.parametrize(
    ("path", "name", "upstream", "login", "role", "entry", "event"),
    [
        ("/api/v1/auth/login", "auth", Upstream.AUTH, False, None, False, None),
        ("/api/v1/auth", "auth", Upstream.AUTH, False, None, False, None),
        ("/api/v1/queue/e1/enter", "queue", Upstream.QUEUE, True, None, False, None),
        ("/api/v1/queue/e1/capacity", "queue_capacity", Upstream.QUEUE, False, None, False, "e1"),
        ("/api/v1/queue/e1/capacity/x", "queue", Upstream.QUEUE, True, None, False, None),
        ("/api/v1/admin/queue/e1", "admin_queue", Upstream.QUEUE, True, "admin", False, None),
        ("/api/v1/admin/users", "admin", None, True, "admin", False, None),
        ("/api/v1/admin", "admin", None, True, "admin", False, None),
        ("/api/v1/seats/e1", "seats", Upstream.TICKET, True, None, True, "e1"),
        ("/api/v1/seats/e1/s9/hold", "seats", Upstream.TICKET, True, None, True, "e1"),
        ("/api/v1/reservations/e2", "reservations", Upstream.TICKET, True, None, True, "e2"),
        ("/api/v1/reservations/e2/r1", "reservations", Upstream.TICKET, True, None, True, "e2"),
        ("/api/v1/events", "events", Upstream.TICKET, False, None, False, None),
        ("/api/v1/events/e1", "events", Upstream.TICKET, False, None, False, None),
        ("/api/v1/stats/e1", "stats", Upstream.TICKET, False, None, False, None),
        ("/api/v1/events/e1/reservations/r1", "events", Upstream.TICKET, False, None, False, None),
        ("/events/e1", "event_page", Upstream.TICKET, False, None, False, "e1"),
        ("/site/assets/event.js", "site_assets", Upstream.TICKET, False, None, False, None),
        ("/api/v1/admin/ratelimit", "admin_ratelimit", RL_ADMIN, True, "admin", False, None),
        (
            "/api/v1/admin/ratelimit/tenants/t1",
            "admin_ratelimit",
            RL_ADMIN,
            True,
            ADMIN,
            False,
            None,
        ),
        ("/api/v1/ratelimit/usage", "ratelimit_usage", RL_ADMIN, False, None, False, None),
        ("/v1/log/jwks.json", "admission_log", Upstream.ADMISSION_LOG, False, None, False, None),
        ("/v1/log/e1/sth", "admission_log", Upstream.ADMISSION_LOG, False, None, False, None),
        ("/v1/log/e1/proof/inclusion", "admission_log", LOG, False, None, False, None),
    ],
)
def test_routes(path, name, upstream, login, role, entry, event):
    match = _match(path)
    assert match is not None
    assert match.route.name == name
    assert match.route.upstream == upstream
    assert match.route.needs_login is login
    assert match.route.needs_role == role
    assert match.route.needs_entry_token is entry
    assert match.event_id == event


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/v1",
        "/api/v2/events",
        "/api/v1/eventsx",
        "/api/v1/adminx/queue",
        "/API/v1/events",
        "/api/v1/seats",
        "/api/v1/reservations",
        "/health/live",
        "/events",
        "/events/e1/more",
        "/site",
        "/sitex/assets/a.js",
        "/v1",
        "/v1/logx/e1/sth",
        "/v2/log/e1/sth",
        "/api/v1/log/e1/sth",
    ],
)
def test_paths_outside_the_table_match_nothing(path):
    assert _match(path) is None


def test_more_specific_routes_come_first():
    for index, route in enumerate(ROUTES):
        for later in ROUTES[index + 1 :]:
            shadowed = len(later.pattern) >= len(route.pattern) and all(
                a == b or a == "{eventId}"
                for a, b in zip(route.pattern, later.pattern, strict=False)
            )
            assert not (shadowed and not route.exact), f"{route.name} shadows {later.name}"


segment = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8)


@given(st.lists(segment, max_size=6))
def test_fuzz_every_seat_or_reservation_route_needs_an_entry_token(segments):
    segments = tuple(segments)
    match = match_route(segments)
    if match is None:
        return
    if segments[:3] in (("api", "v1", "seats"), ("api", "v1", "reservations")):
        assert match.route.needs_entry_token
        assert match.event_id == segments[3]
    if segments[:3] == ("api", "v1", "admin"):
        assert match.route.needs_role == "admin"
    if match.route.needs_entry_token or match.route.needs_role:
        assert match.route.needs_login


areas = st.sampled_from(
    ["auth", "queue", "admin", "seats", "reservations", "events", "stats", "log", "x"]
)


heads = st.sampled_from([("api", "v1"), ("events",), ("site", "assets"), ("site",), ("v1",), ()])


@given(heads, st.lists(st.one_of(segment, areas, st.just("capacity")), max_size=4), areas)
def test_fuzz_the_index_agrees_with_a_scan_of_the_table(head, tail, area):
    segments = (*head, area, *tail)
    linear = (*ROUTES,)
    assert linear is not ROUTES
    assert match_route(segments) == match_route(segments, linear)


def test_only_the_log_and_tenant_usage_are_read_only_and_ratelimit_admin_needs_the_role():
    read_only = {route.name for route in ROUTES if route.methods is not None}
    assert read_only == {"admission_log", "ratelimit_usage"}
    usage = _match("/api/v1/ratelimit/usage")
    assert usage is not None
    assert usage.route.methods == frozenset({"GET", "HEAD"})
    # Exact: nothing else under /api/v1/ratelimit reaches the admin service without a login.
    assert _match("/api/v1/ratelimit/usage/x") is None
    assert _match("/api/v1/ratelimit/tenants") is None
    log = _match("/v1/log/e1/entries")
    assert log is not None
    assert log.route.methods == frozenset({"GET", "HEAD"})
    # The rate-limit admin API sits under the admin rule: login and the admin role.
    for path in ("/api/v1/admin/ratelimit/policies/p1", "/api/v1/admin/ratelimit"):
        match = _match(path)
        assert match is not None
        assert (match.route.needs_login, match.route.needs_role) == (True, "admin")
