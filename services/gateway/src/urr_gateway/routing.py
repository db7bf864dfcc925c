"""The routing table: which upstream serves a path and what a request needs to get there.

Pure data and pure functions over the canonical segments from ``paths.normalise_path``:
matching is by whole segments (``/api/v1/adminx`` is not under ``/api/v1/admin``), the first
route that matches wins, so more specific routes come first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web

#: In a route pattern, the segment naming the event (``/api/v1/seats/{eventId}/...``).
EVENT = "{eventId}"
ADMIN_ROLE = "admin"
#: What a read-only route forwards.
READ_METHODS = frozenset({"GET", "HEAD"})


class Upstream(StrEnum):
    AUTH = "auth"
    QUEUE = "queue"
    TICKET = "ticket"
    ADMISSION_LOG = "admission_log"
    RATELIMIT_ADMIN = "ratelimit_admin"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    #: Leading segments a path must have; ``EVENT`` matches any one segment.
    pattern: tuple[str, ...]
    #: ``None``: a guarded prefix with nothing behind it (checked, then 404).
    upstream: Upstream | None
    needs_login: bool = False
    needs_role: str | None = None
    needs_entry_token: bool = False
    #: Match only paths with exactly these segments, not longer ones.
    exact: bool = False
    #: The methods the route forwards (others are 405 before any upstream); ``None``: all.
    methods: frozenset[str] | None = None
    #: The client's ``X-API-Key`` goes upstream (the route's own credential); on every other
    #: route the gateway keeps it: it chose the tenant's limits, and no upstream needs it.
    forwards_api_key: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: Route
    #: The ``EVENT`` segment of the path, when the pattern has one.
    event_id: str | None


def _segments(path: str) -> tuple[str, ...]:
    return tuple(part if part != "*" else EVENT for part in path.strip("/").split("/"))


ROUTES: tuple[Route, ...] = (
    Route("auth", _segments("/api/v1/auth"), Upstream.AUTH),
    # The Tier-1 counter advancer reads what the queue can absorb without a user session.
    Route("queue_capacity", _segments("/api/v1/queue/*/capacity"), Upstream.QUEUE, exact=True),
    Route("queue", _segments("/api/v1/queue"), Upstream.QUEUE, needs_login=True),
    Route(
        "admin_queue",
        _segments("/api/v1/admin/queue"),
        Upstream.QUEUE,
        needs_login=True,
        needs_role=ADMIN_ROLE,
    ),
    Route(
        "admin_ratelimit",
        _segments("/api/v1/admin/ratelimit"),
        Upstream.RATELIMIT_ADMIN,
        needs_login=True,
        needs_role=ADMIN_ROLE,
    ),
    # The operator console's figures and controls (issue 21), served by the queue service.
    Route(
        "admin_console",
        _segments("/api/v1/admin/console"),
        Upstream.QUEUE,
        needs_login=True,
        needs_role=ADMIN_ROLE,
    ),
    # Every other admin path: refused without the role before anyone learns it does not exist.
    Route("admin", _segments("/api/v1/admin"), None, needs_login=True, needs_role=ADMIN_ROLE),
    Route(
        "seats",
        _segments("/api/v1/seats/*"),
        Upstream.TICKET,
        needs_login=True,
        needs_entry_token=True,
    ),
    Route(
        "reservations",
        _segments("/api/v1/reservations/*"),
        Upstream.TICKET,
        needs_login=True,
        needs_entry_token=True,
    ),
    Route("events", _segments("/api/v1/events"), Upstream.TICKET),
    Route("stats", _segments("/api/v1/stats"), Upstream.TICKET),
    # The protected site itself: the event page (the edge lets only Tier-1 token holders
    # reach it while the event's waiting room is on) and the page's static files.
    Route("event_page", _segments("/events/*"), Upstream.TICKET, exact=True),
    Route("site_assets", _segments("/site/assets"), Upstream.TICKET),
    # A tenant reads its own rate-limit usage: its X-API-Key, checked by the admin service,
    # is the credential (no login); read-only, and nothing else under /api/v1/ratelimit.
    Route(
        "ratelimit_usage",
        _segments("/api/v1/ratelimit/usage"),
        Upstream.RATELIMIT_ADMIN,
        exact=True,
        methods=READ_METHODS,
        forwards_api_key=True,
    ),
    # The operator console's page and its two files (read only, admin role).
    Route(
        "admin_console_page",
        _segments("/admin/console"),
        Upstream.QUEUE,
        needs_login=True,
        needs_role=ADMIN_ROLE,
        methods=READ_METHODS,
    ),
    # The OpenAPI documents of the public APIs and their viewer (issue 21), from the queue
    # service, readable by anyone (native app developers included).
    Route("api_docs", ("api", "docs"), Upstream.QUEUE, exact=True, methods=READ_METHODS),
    Route("api_docs_files", _segments("/api/docs/v1"), Upstream.QUEUE, methods=READ_METHODS),
    # The public admission log (issue 19): anyone may read it, nobody writes through it.
    Route("admission_log", _segments("/v1/log"), Upstream.ADMISSION_LOG, methods=READ_METHODS),
)


#: API patterns start with three literal segments (``api``, ``v1``, the area), the site's
#: with one: one dict lookup on that head picks the few candidates, in table order.
_API_DEPTH = 3


def _head(segments: tuple[str, ...]) -> tuple[str, ...]:
    return segments[:_API_DEPTH] if segments[:1] == ("api",) else segments[:1]


def _index(routes: tuple[Route, ...]) -> dict[tuple[str, ...], tuple[Route, ...]]:
    """Routes by their head (literal in every pattern), order kept."""
    index: dict[tuple[str, ...], list[Route]] = {}
    for route in routes:
        head = _head(route.pattern)
        # A short API pattern would hide longer paths from its head, unless it is exact.
        short = head[:1] == ("api",) and len(head) < _API_DEPTH and not route.exact
        if EVENT in head or short:
            raise ValueError(f"route {route.name} has no literal head to be indexed by")
        index.setdefault(head, []).append(route)
    return {head: tuple(group) for head, group in index.items()}


_ROUTE_INDEX = _index(ROUTES)


def match_route(segments: tuple[str, ...], routes: tuple[Route, ...] = ROUTES) -> RouteMatch | None:
    """The first route whose pattern ``segments`` starts with (or equals, for exact routes)."""
    if routes is ROUTES:
        return _match_table(segments)
    return _first_match(segments, routes)


@functools.lru_cache(maxsize=4096)
def _match_table(segments: tuple[str, ...]) -> RouteMatch | None:
    # Cached: the same few paths (one event's seat map, the status poll) come back on almost
    # every request; a match is frozen, so sharing it is safe. Bounded, so a client sending
    # random paths costs an eviction per request, not memory.
    return _first_match(segments, _ROUTE_INDEX.get(_head(segments), ()))


def _first_match(segments: tuple[str, ...], routes: tuple[Route, ...]) -> RouteMatch | None:
    for route in routes:
        pattern = route.pattern
        if len(segments) < len(pattern) or (route.exact and len(segments) != len(pattern)):
            continue
        event_id: str | None = None
        for expected, actual in zip(pattern, segments, strict=False):
            if expected == EVENT:
                event_id = actual
            elif expected != actual:
                break
        else:
            return RouteMatch(route=route, event_id=event_id)
    return None


#: The route of the request at hand; absent for paths outside the table (answered 404).
ROUTE = web.RequestKey("urr_route", RouteMatch)
