"""Admin API: read an event's live figures and change its configuration at run time."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from urr_common.payloads import json_response, read_json
from urr_common.problems import Conflict
from urr_common.upstream_security import CALLER, public_app_of, require_role
from urr_queue.config import EventConfig, EventConfigPatch
from urr_queue.context import QUEUE_CONTEXT, QueueContext
from urr_queue.estimates import eta_seconds
from urr_queue.handlers import event_id_of, no_event

ADMIN_ROLE = "admin"


def require_admin(request: web.Request) -> None:
    """401 without the gateway's assertion, 403 for another role (``X-User-*`` is ignored).

    On the internal listener the caller's service credential was checked already (the demo
    seed configures its event there, ``PUT /internal/v1/queue/{eventId}/config``)."""
    if request.get(CALLER) is not None:
        return
    require_role(request, ADMIN_ROLE, code="admin_required")


async def _describe(ctx: QueueContext, event_id: str) -> dict[str, Any]:
    figures = await ctx.store.figures(event_id)
    if figures is None:
        raise no_event(event_id)
    config = figures.config
    rate = figures.expected_rate()
    oldest = figures.oldest_wait_ms
    hold = figures.order_hold_since_ms
    return {
        "event_id": event_id,
        "config": config.model_dump(mode="json"),
        "live": {
            "waiting": figures.waiting,
            "admitted": figures.admitted,
            "admitted_last_minute": figures.admitted_last_minute,
            "oldest_waiter_age_seconds": None if oldest is None else round(oldest / 1000, 1),
            "admission_rate_per_second": None if rate is None else round(rate, 3),
            "measured_rate_per_second": (
                None if figures.measured_rate is None else round(figures.measured_rate, 3)
            ),
            "eta_back_seconds": eta_seconds(figures.waiting, rate) if figures.waiting else 0,
            # Tier-1 order (null for other events and with the hold off): numbers below the
            # cursor arrived or were waived; while a lower number is on its way, admission
            # has been held this long.
            "order_cursor": figures.order_cursor,
            "order_holding_seconds": (
                None if hold is None else round(max(0, figures.now_ms - hold) / 1000, 1)
            ),
        },
    }


async def get_event(request: web.Request) -> web.Response:
    require_admin(request)
    event_id = event_id_of(request)
    ctx = public_app_of(request)[QUEUE_CONTEXT]
    return json_response(await _describe(ctx, event_id), headers={"Cache-Control": "no-store"})


async def put_event(request: web.Request) -> web.Response:
    """Create the event or change the given fields (PUT and PATCH alike)."""
    require_admin(request)
    event_id = event_id_of(request)
    patch = await read_json(request, EventConfigPatch)
    ctx = public_app_of(request)[QUEUE_CONTEXT]
    current = await ctx.store.get_config(event_id) or EventConfig()
    wanted = patch.apply_to(current)
    outcome = await ctx.store.configure(event_id, wanted)
    if outcome == "queue_not_empty":
        raise Conflict(
            "require_tier1_token can change only while nobody waits", code="queue_not_empty"
        )
    body = await _describe(ctx, event_id)
    return json_response(body, status=201 if outcome == "created" else 200)


async def delete_event(request: web.Request) -> web.Response:
    """Remove the event (a reset): its queue and sessions go, issued tokens are revoked."""
    require_admin(request)
    event_id = event_id_of(request)
    ctx = public_app_of(request)[QUEUE_CONTEXT]
    revoked = await ctx.ender.delete_event(event_id)
    if revoked is None:
        raise no_event(event_id)
    return json_response({"event_id": event_id, "deleted": True, "tokens_revoked": revoked})
