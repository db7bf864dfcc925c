"""HTTP handlers for waiters (enter, status, leave), the capacity feed and the ticket service.

Identity comes only from the gateway's signed assertion (``X-Urr-Identity``, verified by the
``urr_common.upstream_security`` middleware); ``X-User-*`` headers are never read. The
completion report (``complete``) is served on the internal listener only. Nothing in a
request decides a place in the queue except a verified Tier-1 token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from urr_common.fairness import QueueMethod
from urr_common.logs import bind_request_context
from urr_common.payloads import json_response, read_json
from urr_common.problems import BadRequest, Conflict, Forbidden, NotFound
from urr_common.upstream_security import identity_of, public_app_of
from urr_queue.config import Mode
from urr_queue.context import QUEUE_CONTEXT, QueueContext
from urr_queue.entry import clear_entry_cookie, describe, set_entry_cookie
from urr_queue.estimates import (
    MAX_POLL_S,
    MIN_POLL_S,
    admission_rate,
    eta_seconds,
    poll_after_seconds,
)
from urr_queue.events import EventType, event_record
from urr_queue.members import is_event_id, is_user_id
from urr_queue.sessions import EndReason
from urr_queue.store import Admitted, Refusal, Rostered, Waiting
from urr_queue.tier1 import TIER1_COOKIE, TIER1_HEADER, Tier1Outcome

_NO_STORE = {"Cache-Control": "no-store"}


def event_id_of(request: web.Request) -> str:
    event_id = request.match_info.get("eventId", "")
    if not is_event_id(event_id):
        raise BadRequest("an event id is 1-64 letters, digits, '_' or '-'", code="invalid_event_id")
    return event_id


def user_id_of(request: web.Request) -> str:
    """The user the gateway asserted (401 without a valid ``X-Urr-Identity``)."""
    user_id = identity_of(request).user_id
    if not is_user_id(user_id):
        raise BadRequest("the user id is not usable", code="invalid_user_id")
    bind_request_context(user_id=user_id)
    return user_id


def no_event(event_id: str) -> NotFound:
    return NotFound(f"no queue is configured for event {event_id!r}", code="event_not_found")


def waiting_body(event_id: str, waiting: Waiting) -> dict[str, Any]:
    rate = admission_rate(
        waiting.measured_rate,
        mode=waiting.mode,
        capacity=waiting.capacity,
        admit_per_second=waiting.admit_per_second,
        session_seconds=waiting.session_seconds,
    )
    eta = eta_seconds(waiting.position, rate)
    return {
        "status": "waiting",
        "event_id": event_id,
        "position": waiting.position,
        "ahead": waiting.rank,
        "queue_size": waiting.queue_size,
        "eta_seconds": eta,
        "poll_after_seconds": poll_after_seconds(eta, waiting.idle_timeout_seconds),
        "mode": waiting.mode.value,
        "queue_method": waiting.queue_method.value,
        # The admission log names this stay's admission by it: the receipt is
        # /v1/log/{eventId}/receipt?ticket=<queue_number> once admitted.
        "queue_number": waiting.logged_ticket,
    }


async def _admitted_response(
    ctx: QueueContext, event_id: str, user_id: str, admitted: Admitted
) -> web.Response:
    """Answer an admission with its one entry token (minted now if this is the first ask)."""
    token = admitted.token
    if token is None:
        minted = ctx.tokens.issue(
            user_id, event_id, session_end_ms=admitted.session_end_ms, now_ms=admitted.now_ms
        )
        token = await ctx.store.keep_token(event_id, user_id, admitted.session_end_ms, minted)
        if token is None:
            # The admission ended between the two scripts (expired or left): say so.
            raise NotFound("the admission has just ended; enter again", code="not_in_queue")
        if token == minted:
            ctx.metrics.tokens_issued.inc()
    issued = describe(token)
    remaining = max(1, issued.expires_at - admitted.now_ms // 1000)
    body = {
        "status": "admitted",
        "event_id": event_id,
        "entry_token": token,
        "expires_at": issued.expires_at,
        "expires_in_seconds": remaining,
        "queue_size": admitted.queue_size,
        "poll_after_seconds": max(1, min(MAX_POLL_S, remaining)),
    }
    if admitted.newly_admitted and admitted.number >= 0:
        # Straight in (passthrough): the number its admission record is logged under.
        body["queue_number"] = admitted.number
    response = json_response(body, headers=_NO_STORE)
    set_entry_cookie(response, token, max_age_s=remaining, secure=ctx.settings.cookie_secure)
    return response


def _tier1_token(request: web.Request) -> str | None:
    return request.cookies.get(TIER1_COOKIE) or request.headers.get(TIER1_HEADER) or None


async def enter(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    user_id = user_id_of(request)
    ctx = request.app[QUEUE_CONTEXT]
    token = _tier1_token(request)
    verdict, tier1 = ctx.tier1.check(token, event_id, user_id)
    result = await ctx.store.visit(
        event_id,
        user_id,
        enter=True,
        tier1_position=tier1.position if tier1 else None,
        tier1_place=tier1.place if tier1 else "",
        tier1_prequeue_sale_ms=tier1.prequeue_sale_ms if tier1 else None,
        tier1_issued_at=tier1.issued_at if tier1 else 0,
    )
    if isinstance(result, Refusal):
        _refused(ctx, event_id, result, verdict, token is not None)
    if isinstance(result, Rostered):
        ctx.metrics.entries.labels("prequeue" if result.entered else "already_waiting").inc()
        status = 201 if result.entered else 200
        return json_response(rostered_body(event_id, result), status=status, headers=_NO_STORE)
    if token is not None:
        ctx.metrics.tier1_tokens.labels(verdict.value, str(result.tier1_required).lower()).inc()
    if isinstance(result, Admitted):
        return await _entered_admitted(ctx, event_id, user_id, result)
    outcome = "entered" if result.entered else "already_waiting"
    ctx.metrics.entries.labels(outcome).inc()
    if result.entered:
        ctx.publisher.publish(
            event_record(
                EventType.ENTERED,
                event_id,
                user_id,
                at_ms=result.now_ms,
                position=result.position,
                queueNumber=result.number,
            )
        )
    status = 201 if result.entered else 200
    return json_response(waiting_body(event_id, result), status=status, headers=_NO_STORE)


def rostered_body(event_id: str, rostered: Rostered) -> dict[str, Any]:
    """On the pre-queue's roster: the order is drawn at sale start."""
    until_sale_s = max(0, (rostered.sale_start_ms - rostered.now_ms) // 1000)
    return {
        "status": "prequeue",
        "event_id": event_id,
        # The salted hash published in the roster: find it there to prove the entry.
        "member_id": rostered.member_id,
        "roster_size": rostered.roster_size,
        "sale_start": datetime.fromtimestamp(rostered.sale_start_ms / 1000, tz=UTC).isoformat(),
        # Fixed before the pre-queue opened: the secret revealed at sale start must hash to it.
        "prequeue_commitment": rostered.commitment,
        "poll_after_seconds": max(MIN_POLL_S, min(MAX_POLL_S, until_sale_s // 4)),
    }


async def _entered_admitted(
    ctx: QueueContext, event_id: str, user_id: str, admitted: Admitted
) -> web.Response:
    if admitted.newly_admitted:
        ctx.metrics.entries.labels("admitted_passthrough").inc()
        _publish_passthrough(ctx, event_id, user_id, admitted, entered=admitted.entered)
    else:
        ctx.metrics.entries.labels("already_admitted").inc()
    return await _admitted_response(ctx, event_id, user_id, admitted)


def _publish_passthrough(
    ctx: QueueContext, event_id: str, user_id: str, admitted: Admitted, *, entered: bool
) -> None:
    ctx.metrics.admitted.labels("passthrough").inc()
    number = admitted.number if admitted.number >= 0 else None
    if entered:
        ctx.publisher.publish(
            event_record(
                EventType.ENTERED,
                event_id,
                user_id,
                at_ms=admitted.now_ms,
                position=1,
                queueNumber=number,
            )
        )
    if ctx.store.outbox_records:
        return  # the visit script wrote the admission's record into the outbox (issue 19)
    ctx.publisher.publish(
        event_record(
            EventType.ADMITTED,
            event_id,
            user_id,
            at_ms=admitted.now_ms,
            position=1,
            queueNumber=number,
            path="passthrough",
        )
    )


def _refused(
    ctx: QueueContext,
    event_id: str,
    refusal: Refusal,
    verdict: Tier1Outcome,
    had_token: bool,
) -> NoReturn:
    if refusal is Refusal.NO_EVENT:
        ctx.metrics.entries.labels("no_event").inc()
        raise no_event(event_id)
    if refusal is Refusal.REJECTED:
        ctx.metrics.entries.labels("rejected").inc()
        raise Conflict(
            "this event takes nobody into its queue: it is sold out or closed",
            code="event_closed",
            queue_method="reject",
        )
    if refusal is Refusal.PREQUEUE_NOT_OPEN:
        ctx.metrics.entries.labels("prequeue_not_open").inc()
        raise Conflict("the pre-queue of this event has not opened yet", code="prequeue_not_open")
    if refusal is Refusal.CLOSED:
        ctx.metrics.entries.labels("closed").inc()
        raise Forbidden("this queue takes no new entries", code="queue_closed")
    ctx.metrics.entries.labels("tier1_refused").inc()
    if refusal in _PREQUEUE_PASS_REFUSALS:
        ctx.metrics.tier1_tokens.labels(refusal.value, "true").inc()
        raise Forbidden(
            _PREQUEUE_PASS_REFUSALS[refusal],
            code=refusal.value,
            redirect_to=f"/vwr/{event_id}",
        )
    if refusal in (Refusal.TIER1_PASS_SPENT, Refusal.TIER1_PASS_BOUND):
        ctx.metrics.tier1_tokens.labels(refusal.value, "true").inc()
        raise _pass_used(event_id, refusal)
    reason = verdict.value
    if had_token:
        ctx.metrics.tier1_tokens.labels(reason, "true").inc()
    raise Forbidden(
        "this event admits only visitors coming through its waiting room with a valid pass",
        code="vwr_token_required",
        reason=reason,
        redirect_to=f"/vwr/{event_id}",
    )


#: A genuine pass that does not fit the event's pre-queue (behind a Tier-1 room).
_PREQUEUE_PASS_REFUSALS = {
    Refusal.TIER1_PASS_STALE: (
        "this waiting-room pass was signed before the pre-queue opened; take a new place"
    ),
    Refusal.TIER1_PASS_MISMATCH: (
        "this waiting-room pass does not fit the event's pre-queue; take a new place"
    ),
    Refusal.PREQUEUE_CLOSED: (
        "the pre-queue closed at sale start before this pass reached it; the pass is spent: "
        "take a new place, in arrival order behind the shuffled roster"
    ),
}


def _pass_used(event_id: str, refusal: Refusal) -> Forbidden:
    """A genuine pass that cannot admit (again): its place is spent, or bound to another user."""
    if refusal is Refusal.TIER1_PASS_SPENT:
        detail = (
            "this waiting-room place has already let you in once and that visit is over; "
            "take a new place at the back of the line"
        )
    else:
        detail = "this waiting-room pass belongs to another account; take a place of your own"
    return Forbidden(detail, code=refusal.value, redirect_to=f"/vwr/{event_id}")


async def status(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    user_id = user_id_of(request)
    ctx = request.app[QUEUE_CONTEXT]
    result = await ctx.store.visit(event_id, user_id, enter=False)
    if result is Refusal.NO_EVENT:
        raise no_event(event_id)
    if result is Refusal.REJECTED:
        raise Conflict(
            "this event takes nobody into its queue: it is sold out or closed; your place is gone",
            code="event_closed",
            queue_method="reject",
        )
    if isinstance(result, Refusal):
        raise NotFound("you have no place in this queue; enter again", code="not_in_queue")
    if isinstance(result, Rostered):
        return json_response(rostered_body(event_id, result), headers=_NO_STORE)
    if isinstance(result, Admitted):
        if result.newly_admitted:
            _publish_passthrough(ctx, event_id, user_id, result, entered=False)
        return await _admitted_response(ctx, event_id, user_id, result)
    return json_response(waiting_body(event_id, result), headers=_NO_STORE)


async def leave(request: web.Request) -> web.Response:
    event_id = event_id_of(request)
    user_id = user_id_of(request)
    ctx = request.app[QUEUE_CONTEXT]
    left = await ctx.ender.end(event_id, user_id, EndReason.LEAVE)
    if left is None:
        raise no_event(event_id)
    response = json_response(
        {"status": "left", "event_id": event_id, "was": left.was}, headers=_NO_STORE
    )
    clear_entry_cookie(response, secure=ctx.settings.cookie_secure)
    return response


async def capacity(request: web.Request) -> web.Response:
    """What Tier 2 can absorb (for the Tier-1 advancer, which calls without a user)."""
    event_id = event_id_of(request)
    ctx = request.app[QUEUE_CONTEXT]
    figures = await ctx.store.figures(event_id)
    if figures is None:
        raise no_event(event_id)
    config = figures.config
    # A paused or closed event absorbs nobody new, whatever its configured rate.
    absorbing = config.mode in (Mode.QUEUE, Mode.PASSTHROUGH) and (
        config.queue_method is not QueueMethod.REJECT
    )
    waiting = figures.waiting
    if config.has_prequeue:
        # The roster waits outside the queue until the reveal, ahead of everyone: Tier 1
        # releases nobody numbered into Tier 2 while it is there.
        waiting += await ctx.store.roster_not_placed(event_id)
    body = {
        "waiting": waiting,
        "admitted": figures.admitted,
        "capacity": config.capacity,
        "admit_per_second": config.admit_per_second if absorbing else 0.0,
    }
    return json_response(body, headers=_NO_STORE)


class CompleteBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    userId: str = Field(min_length=1, max_length=128)


async def complete(request: web.Request) -> web.Response:
    """The ticket service reports a finished booking: free the slot, revoke the token."""
    event_id = event_id_of(request)
    body = await read_json(request, CompleteBody)
    if not is_user_id(body.userId):
        raise BadRequest("the user id is not usable", code="invalid_user_id")
    ctx = public_app_of(request)[QUEUE_CONTEXT]
    left = await ctx.ender.end(event_id, body.userId, EndReason.COMPLETED)
    if left is None:
        raise no_event(event_id)
    return json_response({"released": left.was == "admitted"}, headers=_NO_STORE)


async def jwks(request: web.Request) -> web.Response:
    ctx = request.app[QUEUE_CONTEXT]
    return json_response(ctx.tokens.keys.to_jwks(), headers={"Cache-Control": "max-age=300"})
