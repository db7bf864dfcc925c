"""The console's routes on the queue service, behind the gateway's admin role.

``GET /admin/console`` (the page and its two files), ``GET /api/v1/admin/console/figures``,
``POST /api/v1/admin/console/events/{eventId}/changes`` and ``GET .../audit``. Identity is
read with the queue's own helpers (``require_admin``, ``user_id_of``), so a change in how the
gateway hands identity over changes those, not this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from importlib.resources import files
from typing import Any

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from urr_common.clients import open_postgres
from urr_common.logs import get_logger
from urr_common.payloads import json_response, read_json
from urr_common.problems import BadRequest, Conflict, NotFound, ProblemError
from urr_common.service import request_id_of
from urr_common.settings import PostgresSettings
from urr_queue.admin import require_admin
from urr_queue.config import EventConfig
from urr_queue.console.aggregate import ConsoleAggregator
from urr_queue.console.history import ConsoleHistory
from urr_queue.console.model import AuditRecord, ConsoleChange, tier2_before_after
from urr_queue.console.settings import ConsoleSettings
from urr_queue.console.sources import RefusalSource, SeatSource, Tier1Source, Tier2Source
from urr_queue.context import QUEUE_CONTEXT
from urr_queue.handlers import event_id_of, no_event, user_id_of

_LOG = get_logger(__name__)

CONSOLE = web.AppKey("urr_queue_console", ConsoleAggregator)
TIER1 = web.AppKey("urr_queue_console_tier1", Tier1Source)
HTTP = web.AppKey("urr_queue_console_http", aiohttp.ClientSession)

DynamoFactory = Callable[[], AbstractAsyncContextManager[Any]]

_STATIC = files("urr_queue.console") / "static"
_FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}
#: The page needs nothing from anywhere else: scripts, styles and requests stay on this origin.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class BadGateway(ProblemError):
    status = 502
    default_code = "bad_gateway"


_TIER1_TIMEOUT = aiohttp.ClientTimeout(total=5)
AUDIT_LIMIT_MAX = 200


async def page(request: web.Request) -> web.Response:
    require_admin(request)
    html = (_STATIC / "console.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html", headers=_PAGE_HEADERS)


async def asset(request: web.Request) -> web.Response:
    require_admin(request)
    name = request.match_info["name"]
    if name not in _FILES:
        raise NotFound("no such file", code="not_found")
    text = (_STATIC / name).read_text(encoding="utf-8")
    return web.Response(
        text=text, content_type=_FILES[name], headers={"Cache-Control": "no-cache", **_NOSNIFF}
    )


_NOSNIFF = {"X-Content-Type-Options": "nosniff"}


async def figures(request: web.Request) -> web.Response:
    require_admin(request)
    body = await request.app[CONSOLE].view()
    return json_response(body, headers={"Cache-Control": "no-store"})


async def audit_trail(request: web.Request) -> web.Response:
    require_admin(request)
    raw = request.query.get("limit", "50")
    # isascii: str.isdigit() also accepts digits int() refuses ("²").
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= AUDIT_LIMIT_MAX:
        raise BadRequest(f"limit is a whole number from 1 to {AUDIT_LIMIT_MAX}", code="bad_limit")
    records = await request.app[CONSOLE].history.audit_trail(int(raw))
    return json_response({"records": records}, headers={"Cache-Control": "no-store"})


async def change(request: web.Request) -> web.Response:
    """Apply one confirmed change and record it.

    Bad input, an unknown event and a Tier-1 refusal change nothing; a part that fails after
    another was applied leaves the applied part recorded.
    """
    require_admin(request)
    actor = user_id_of(request)
    event_id = event_id_of(request)
    wanted = await read_json(request, ConsoleChange)
    ctx = request.app[QUEUE_CONTEXT]
    patch = wanted.tier2_patch()
    current: EventConfig | None = None
    if patch is not None:
        current = await ctx.store.get_config(event_id)
        if current is None:
            raise no_event(event_id)
    tier1_before: bool | None = None
    if wanted.waiting_room_active is not None:
        tier1_before = await _tier1_state(request, event_id)

    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    try:
        # Tier 1 first: it is the part that may refuse (the operator's token, the room), and
        # a refusal then changes nothing at all.
        if wanted.waiting_room_active is not None:
            await _set_waiting_room(request, event_id, wanted.waiting_room_active)
            before["waiting_room_active"] = tier1_before
            after["waiting_room_active"] = wanted.waiting_room_active
        if patch is not None and current is not None:
            updated = patch.apply_to(current)
            if await ctx.store.configure(event_id, updated) == "queue_not_empty":
                raise Conflict("the queue refused the change", code="queue_not_empty")
            old, new = tier2_before_after(current, updated, patch)
            before.update(old)
            after.update(new)
    finally:
        # Whatever was applied is recorded, also when a later part failed.
        if after:
            record = await _record(request, actor, event_id, before, after)
    return json_response(record.to_json())


async def _record(
    request: web.Request,
    actor: str,
    event_id: str,
    before: dict[str, Any],
    after: dict[str, Any],
) -> AuditRecord:
    console = request.app[CONSOLE]
    console.invalidate()
    try:
        at_ms = await console.history.now_ms()
    except RedisError:
        at_ms = int(time.time() * 1000)
    record = AuditRecord(
        at_ms=at_ms,
        actor=actor,
        event_id=event_id,
        before=before,
        after=after,
        request_id=request_id_of(request),
    )
    # The log line is the record of last resort: the change is made, even if the stream
    # write fails (the operator must not read "not applied" then).
    _LOG.info("console_change", **record.to_json())
    try:
        await console.history.audit(record, keep=console.settings.audit_max)
    except RedisError as exc:
        _LOG.warning("console_audit_not_stored", error=f"{type(exc).__name__}: {exc}")
    return record


async def _tier1_state(request: web.Request, event_id: str) -> bool:
    app = request.app
    if not app[CONSOLE].settings.tier1_admin_url or TIER1 not in app:
        raise Conflict(
            "the waiting room cannot be switched from this console (no Tier-1 admin URL)",
            code="tier1_admin_not_configured",
        )
    row = await app[TIER1].one(event_id)
    if row is None:
        raise NotFound(f"no waiting room for event {event_id!r}", code="event_not_found")
    return row.is_active


async def _set_waiting_room(request: web.Request, event_id: str, active: bool) -> None:
    """The Tier-1 admin API makes the change (it also republishes the edge's event list);
    the operator's own credential goes along, so Tier 1 checks the role itself."""
    url = f"{request.app[CONSOLE].settings.tier1_admin_url}/vwr/admin/events/{event_id}"
    headers = {}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with request.app[HTTP].put(
            url, json={"isActive": active}, headers=headers, timeout=_TIER1_TIMEOUT
        ) as answer:
            if answer.status >= 300:
                detail = (await answer.text())[:300]
                raise BadGateway(
                    f"the Tier-1 admin API answered {answer.status}: {detail}",
                    code="tier1_admin_refused",
                )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BadGateway(
            f"the Tier-1 admin API did not answer ({type(exc).__name__})",
            code="tier1_admin_unreachable",
        ) from exc


def setup_console(
    app: web.Application, settings: ConsoleSettings, dynamodb_factory: DynamoFactory | None
) -> None:
    """Add the console's routes and its lifecycle (after the queue's own, whose store it
    reads)."""
    if not settings.enabled:
        return

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        ctx = app[QUEUE_CONTEXT]
        redis = ctx.store.redis
        async with AsyncExitStack() as stack:
            tier1 = None
            if settings.tier1_counters_table and dynamodb_factory is not None:
                dynamodb = await stack.enter_async_context(dynamodb_factory())
                tier1 = Tier1Source(dynamodb, settings.tier1_counters_table)
                app[TIER1] = tier1
            seats = None
            if settings.seats_dsn is not None:
                pool = await stack.enter_async_context(
                    open_postgres(
                        PostgresSettings(
                            dsn=settings.seats_dsn, min_connections=0, max_connections=2
                        )
                    )
                )
                seats = SeatSource(pool)
            app[HTTP] = await stack.enter_async_context(aiohttp.ClientSession())
            history = ConsoleHistory(
                redis, points=settings.history_points, interval_s=settings.sample_interval_s
            )
            console = ConsoleAggregator(
                settings,
                history,
                tier2=Tier2Source(ctx.store),
                refusals=RefusalSource(redis),
                tier1=tier1,
                seats=seats,
            )
            app[CONSOLE] = console
            stop = asyncio.Event()
            sampler = asyncio.create_task(console.run_sampler(stop), name="console-sampler")
            try:
                yield
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/admin/console", page)
    app.router.add_get("/admin/console/{name}", asset)
    base = "/api/v1/admin/console"
    app.router.add_get(f"{base}/figures", figures)
    app.router.add_get(f"{base}/audit", audit_trail)
    app.router.add_post(f"{base}/events/{{eventId}}/changes", change)
