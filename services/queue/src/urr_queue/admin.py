"""Admin API: read an event's live figures and change its configuration at run time."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from urr_common.fairness import SEED_BYTES, QueueMethod, seed_commitment
from urr_common.payloads import json_response, read_json, validation_errors
from urr_common.problems import Conflict, Unprocessable
from urr_common.upstream_security import CALLER, public_app_of, require_role
from urr_queue import order_seed, prequeue
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
    seed = await ctx.store.order_seed(event_id)
    return {
        "event_id": event_id,
        "config": config.model_dump(mode="json"),
        # The random method's seed stays secret while people queue; its commitment is public.
        "order_seed_commitment": None if seed is None else seed_commitment(bytes.fromhex(seed)),
        # Revealed once the line was over (order_seed.py): the event never queues by it again.
        "order_seed_revealed": await ctx.store.order_seed_revealed(event_id),
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
    stored = await ctx.store.get_config(event_id)
    current = stored or EventConfig()
    try:
        wanted = patch.apply_to(current)
    except ValidationError as exc:
        raise Unprocessable(
            "the settings do not fit together",
            code="validation_failed",
            errors=validation_errors(exc),
        ) from exc
    _prequeue_unchanged(current, wanted)
    seed = await ctx.store.order_seed(event_id)
    if seed is not None and patch.order_seed is not None and patch.order_seed != seed:
        raise Unprocessable(
            "the event's order_seed is set and never changes", code="order_seed_immutable"
        )
    if seed is None:
        # Drawn now unless the operator brings one (to give Tier 1 and Tier 2 the same).
        seed = patch.order_seed or secrets.token_hex(SEED_BYTES)
    random_now = wanted.queue_method is QueueMethod.RANDOM
    salt = None
    if wanted.has_prequeue and await ctx.store.prequeue_salt(event_id) is None:
        salt = secrets.token_hex(SEED_BYTES)
    outcome = await ctx.store.configure(event_id, wanted, seed=seed, prequeue_salt=salt)
    if outcome == "order_seed_revealed":
        raise Conflict(
            "the event's order seed is public: the random method would let anyone pick a "
            "small order key; use another method or keep the event closed",
            code="order_seed_revealed",
        )
    if outcome == "queue_not_empty":
        raise Conflict(
            "require_tier1_token, and the queue method between fifo and random, can change "
            "only while nobody waits",
            code="queue_not_empty",
        )
    if random_now and (stored is None or current.queue_method is not QueueMethod.RANDOM):
        # The commitment goes out before anyone queues by the seed (the log keeps the first).
        await _publish_durably(ctx, event_id, [order_seed.committed_record(event_id, seed)])
    if wanted.has_prequeue and not current.has_prequeue:
        # The commitment goes out before the pre-queue opens (the log shows it from then on).
        await _publish_durably(ctx, event_id, [prequeue.committed_record(event_id, wanted)])
    body = await _describe(ctx, event_id)
    return json_response(body, status=201 if outcome == "created" else 200)


def _prequeue_unchanged(current: EventConfig, wanted: EventConfig) -> None:
    """A pre-queue, once set, never changes: its commitment is public from then on."""
    if not current.has_prequeue:
        return
    fields = ("prequeue_start", "sale_start", "prequeue_commitment")
    if any(getattr(current, name) != getattr(wanted, name) for name in fields):
        raise Unprocessable(
            "the pre-queue (its times and commitment) is set once and never changes",
            code="prequeue_immutable",
        )


class RevealBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: str = Field(min_length=2, max_length=1024, pattern="^([0-9a-f]{2})+$")


async def reveal_prequeue(request: web.Request) -> web.Response:
    """At sale start: freeze the roster, check the secret, shuffle and place it in line."""
    require_admin(request)
    event_id = event_id_of(request)
    body = await read_json(request, RevealBody)
    ctx = request.app[QUEUE_CONTEXT]
    config = await ctx.store.get_config(event_id)
    if config is None:
        raise no_event(event_id)
    document = await prequeue.reveal(ctx.store, event_id, config, bytes.fromhex(body.secret))
    await _publish_durably(ctx, event_id, prequeue.published_records(event_id, document))
    return web.Response(body=document, content_type="application/json")


async def reveal_order_seed(request: web.Request) -> web.Response:
    """Once the line is over: publish the random method's seed (409 before, see order_seed)."""
    require_admin(request)
    event_id = event_id_of(request)
    ctx = public_app_of(request)[QUEUE_CONTEXT]
    seed = await order_seed.reveal(ctx.store, event_id)
    record = order_seed.revealed_record(event_id, seed)
    # Republished on every call (fixed id): the log keeps the first and drops the repeats.
    await _publish_durably(ctx, event_id, [record])
    body = {
        "event_id": event_id,
        "order_seed": seed,
        "order_seed_commitment": record["commitment"],
    }
    return json_response(body, headers={"Cache-Control": "no-store"})


async def _publish_durably(ctx: QueueContext, event_id: str, records: list[dict[str, Any]]) -> None:
    """The admission log's pre-queue records through the event's outbox (relayed until Kafka
    acknowledged them, issue 19); on the best-effort buffer where no relay runs."""
    if not await ctx.store.append_outbox(event_id, records):
        for record in records:
            ctx.publisher.publish(record)


async def delete_event(request: web.Request) -> web.Response:
    """Remove the event (a reset): its queue and sessions go, issued tokens are revoked."""
    require_admin(request)
    event_id = event_id_of(request)
    ctx = public_app_of(request)[QUEUE_CONTEXT]
    revoked = await ctx.ender.delete_event(event_id)
    if revoked is None:
        raise no_event(event_id)
    return json_response({"event_id": event_id, "deleted": True, "tokens_revoked": revoked})
