"""Admin routes: create or change an event, advance by hand, reset, reveal the order seed.

Locally the caller shows an admin access token (role ``admin``, verified with the auth
service's keys). In AWS (``URR_ADMIN_AUTH=iam``) API Gateway's IAM authoriser guards these
routes and the function checks that a signed caller identity reached it.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter, Router
from botocore.exceptions import BotoCoreError, ClientError

from urr_common.fairness import QUEUE_METHODS, SEED_BYTES, QueueMethod, is_hex64
from urr_common.tokens import TokenError
from urr_vwr_lambda import proof_of_work
from urr_vwr_lambda.advancer import advance_event, seed_committed
from urr_vwr_lambda.api import (
    bearer_token,
    json_response,
    read_json_body,
    request_cookie,
    require_event_id,
)
from urr_vwr_lambda.grant_log import GrantLogUnavailable, seed_revealed_record
from urr_vwr_lambda.pow_gate import BOT_CHALLENGES
from urr_vwr_lambda.problem import VwrProblem
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.store import EventNotFound, EventState, line_order_of

MAX_BATCH = 100_000


def require_admin(runtime: VwrRuntime, resolver: BaseRouter) -> str:
    """The admin's identity, or a 401/403 problem."""
    if runtime.settings.admin_auth == "iam":
        caller = _iam_caller(resolver.current_event.raw_event)
        if not caller:
            raise VwrProblem(403, "forbidden", "this route needs an IAM-signed request")
        return caller
    token = bearer_token(resolver) or request_cookie(resolver, "access_token")
    if not token:
        raise VwrProblem(
            401,
            "unauthorized",
            "an admin access token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        identity = runtime.access_verifier.verify(token)
    except TokenError as exc:
        raise VwrProblem(
            401,
            "access_token_invalid",
            f"the access token was refused ({exc.reason})",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from exc
    if identity.role != "admin":
        raise VwrProblem(403, "forbidden", "this route needs the admin role")
    return identity.user_id


def _iam_caller(event: dict[str, Any]) -> str | None:
    context = event.get("requestContext")
    if not isinstance(context, dict):
        return None
    identity = context.get("identity")
    if isinstance(identity, dict) and isinstance(identity.get("userArn"), str):
        return str(identity["userArn"])
    authorizer = context.get("authorizer")
    iam = authorizer.get("iam") if isinstance(authorizer, dict) else None
    if isinstance(iam, dict) and isinstance(iam.get("userArn"), str):
        return str(iam["userArn"])
    return None


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise VwrProblem(
            422, "validation_failed", f"{name} must be an integer from {low} to {high}"
        )
    return value


def _admin_view(state: EventState) -> dict[str, Any]:
    return {
        **state.public(),
        "batchSize": state.batch_size,
        "epoch": state.epoch,
        "botChallenge": state.bot_challenge,
        "powBits": state.pow_bits,
    }


def _bot_challenge(body: dict[str, Any], existing: EventState | None) -> tuple[str, int] | None:
    """``(botChallenge, powBits)`` when the body changes either, validated; else None."""
    if "botChallenge" not in body and "powBits" not in body:
        return None
    challenge = body.get("botChallenge", existing.bot_challenge if existing else "none")
    if challenge not in BOT_CHALLENGES:
        raise VwrProblem(422, "validation_failed", "botChallenge must be 'none' or 'pow'")
    bits = _int_field(body, "powBits", proof_of_work.MIN_BITS, proof_of_work.MAX_BITS)
    if bits is None:
        kept = existing.pow_bits if existing else 0
        bits = kept if kept >= proof_of_work.MIN_BITS else proof_of_work.DEFAULT_BITS
    return str(challenge), bits


def _queue_method(
    body: dict[str, Any], existing: EventState | None
) -> tuple[QueueMethod | None, str | None]:
    """``(queueMethod, orderSeed)`` of the body, validated; the seed is drawn for a new event.

    The seed is written once (422 for another); fifo and random order the line differently,
    so switching between them waits for an empty run (a new event, or after a reset).
    """
    raw = body.get("queueMethod")
    method = None
    if raw is not None:
        if raw not in QUEUE_METHODS:
            raise VwrProblem(
                422, "validation_failed", f"queueMethod must be one of {', '.join(QUEUE_METHODS)}"
            )
        method = QueueMethod(raw)
    seed = body.get("orderSeed")
    if seed is not None and not is_hex64(seed):
        raise VwrProblem(422, "validation_failed", "orderSeed must be 64 lowercase hex digits")
    stored = existing.order_seed if existing else None
    if stored is not None and seed is not None and seed != stored:
        raise VwrProblem(422, "order_seed_immutable", "the event's orderSeed never changes")
    if stored is None and seed is None:
        seed = secrets.token_hex(SEED_BYTES)
    revealed = existing is not None and existing.order_seed_revealed_ms is not None
    wanted_method = method or (existing.queue_method if existing else None)
    if revealed and wanted_method is QueueMethod.RANDOM and body.get("isActive"):
        raise VwrProblem(
            409,
            "order_seed_revealed",
            "the event's order seed was revealed: it never opens with the random method again",
        )
    if existing is not None and method is not None:
        wanted = line_order_of(method)
        if wanted is not None and wanted != existing.line_order and existing.next_position > 0:
            raise VwrProblem(
                409,
                "line_not_empty",
                "fifo and random order the line differently: switch between them before "
                "anyone joins, or after a reset",
            )
    return method, seed


def _moment_ms(body: dict[str, Any], name: str) -> int | None:
    """An RFC 3339 time with its offset (``2026-12-06T10:00:00Z``) as epoch ms, or None."""
    value = body.get(name)
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError(name)
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise VwrProblem(
            422, "validation_failed", f"{name} must be an RFC 3339 time with its offset"
        ) from exc
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise VwrProblem(422, "validation_failed", f"{name} must carry its offset (Z or +hh:mm)")
    return round(moment.timestamp() * 1000)


def _prequeue(
    body: dict[str, Any], existing: EventState | None, method: QueueMethod | None
) -> tuple[int, int] | None:
    """``(prequeueStart, saleStart)`` in epoch ms when the body sets the pre-queue; else None.

    Both or neither; sale start after pre-queue start; set once (Tier 2's commitment to its
    times is public), and only before anyone holds a number of this run; never with the
    random method (a pre-queue's later arrivals go by number, behind the shuffled roster).
    """
    start, sale = _moment_ms(body, "prequeueStart"), _moment_ms(body, "saleStart")
    stored = (
        (existing.prequeue_start_ms, existing.sale_start_ms)
        if existing is not None and existing.has_prequeue
        else None
    )
    wanted_method = method or (existing.queue_method if existing else QueueMethod.FIFO)
    if start is None and sale is None:
        if stored is not None and wanted_method is QueueMethod.RANDOM:
            raise VwrProblem(
                422, "validation_failed", "a pre-queue event cannot use the random method"
            )
        return None
    if start is None or sale is None:
        raise VwrProblem(
            422, "validation_failed", "a pre-queue needs both prequeueStart and saleStart"
        )
    if sale <= start:
        raise VwrProblem(422, "validation_failed", "saleStart must come after prequeueStart")
    if wanted_method is QueueMethod.RANDOM:
        raise VwrProblem(422, "validation_failed", "a pre-queue event cannot use the random method")
    if stored is not None:
        if stored != (start, sale):
            raise VwrProblem(
                422,
                "prequeue_immutable",
                "the pre-queue's times are set once and never change (a new event id instead)",
            )
        return None
    if existing is not None and existing.next_position > 0:
        raise VwrProblem(
            409,
            "line_not_empty",
            "a pre-queue is set before anyone takes a number (a new event, or after a reset)",
        )
    return start, sale


def _commit_seed(runtime: VwrRuntime, state: EventState) -> None:
    """An event using the random method: its seed's commitment goes public now, before any
    draw (the advancer waits for it too, ``seed_committed``, so a failure here only delays
    the first draw)."""
    if state.queue_method is QueueMethod.RANDOM:
        seed_committed(runtime, state)


def _refuse_unavailable(limited_by: str) -> None:
    """A 503 problem for an advance that could not run (nothing changed)."""
    detail = _UNAVAILABLE.get(limited_by)
    if detail is not None:
        raise VwrProblem(503, limited_by, detail, headers={"Retry-After": "5"})


_UNAVAILABLE = {
    "seed_not_committed": "the order seed's commitment is not public yet (the grant log did "
    "not take it); nothing was drawn",
    "capacity_unavailable": "Tier 2's capacity feed did not answer; nothing was advanced",
}


def _reveal(runtime: VwrRuntime, state: EventState) -> EventState:
    """Mark the seed revealed, once the line is over: the room takes nobody new (inactive,
    or the reject method) and nobody waits; a 409 problem before (as the queue's reveal)."""
    takes_new = state.is_active and state.queue_method is not QueueMethod.REJECT
    if takes_new or state.waiting > 0:
        raise VwrProblem(
            409,
            "seed_reveal_too_early",
            "the order seed is revealed once the line is over: deactivate the room (or use "
            "the reject method) and advance until nobody waits",
            isActive=state.is_active,
            queueMethod=state.queue_method.value,
            waiting=state.waiting,
        )
    revealed = runtime.store.reveal_order_seed(state, now_ms=runtime.now_ms())
    if revealed is None:
        raise VwrProblem(409, "concurrent_update", "the event changed meanwhile: try again")
    return revealed


def _reveal_route(runtime: VwrRuntime, event_id: str) -> Response[str]:
    """Mark the seed revealed (once, see ``_reveal``) and publish it to the admission log;
    a repeated reveal republishes the same record (stored once)."""
    state = runtime.store.get_event(event_id, consistent=True)
    if state is None:
        raise VwrProblem(404, "event_not_found", f"no waiting room for {event_id}")
    if state.order_seed is None:
        raise VwrProblem(409, "no_order_seed", "this event has no order seed")
    if state.order_seed_revealed_ms is None:
        state = _reveal(runtime, state)
    record = seed_revealed_record(event_id, state.order_seed or "")
    publisher = runtime.grant_log
    if publisher is not None:
        try:
            publisher.publish([record])  # fixed id: a repeated reveal is stored once
        except GrantLogUnavailable as exc:
            raise VwrProblem(
                503,
                "grant_log_unavailable",
                "the seed is marked revealed but did not reach the admission log: retry",
                headers={"Retry-After": "5"},
            ) from exc
    return json_response(
        200,
        {
            "eventId": event_id,
            "orderSeed": record["seed"],
            "orderSeedCommitment": record["commitment"],
            "published": publisher is not None,
        },
    )


def build_admin_router(runtime: VwrRuntime) -> Router:
    # Imported here: the gates' admin routes use this module's helpers.
    from urr_vwr_lambda.gates.admin_routes import (
        add_access_code_routes,
        parse_gate_fields,
        write_gate_fields,
    )

    router = Router()  # type: ignore[no-untyped-call]

    @router.put("/vwr/admin/events/<event_id>")
    def put_event(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        body = read_json_body(router)
        is_active = body.get("isActive")
        if not isinstance(is_active, bool):
            raise VwrProblem(422, "validation_failed", "isActive must be true or false")
        batch = _int_field(body, "batchSize", 1, MAX_BATCH)
        gate_fields = parse_gate_fields(body)
        store = runtime.store
        existing = store.get_event(event_id, consistent=True)
        challenge = _bot_challenge(body, existing)
        method, seed = _queue_method(body, existing)
        prequeue = _prequeue(body, existing, method)
        if batch is None:
            batch = (
                existing.batch_size if existing else runtime.settings.advancer.default_batch_size
            )
        # The gates first: a room opened together with a code requirement never admits
        # anyone without a code in between.
        gate_view = write_gate_fields(runtime, event_id, gate_fields)
        state = store.put_event(
            event_id,
            is_active=is_active,
            batch_size=batch,
            now_ms=runtime.now_ms(),
            bot_challenge=challenge,
            queue_method=method,
            order_seed=seed if existing is None or existing.order_seed is None else None,
            prequeue=prequeue,
        )
        runtime.event_cache.forget(event_id)
        _commit_seed(runtime, state)
        try:
            runtime.publish_edge_config(store.active_event_ids())
        except (OSError, ValueError, ClientError, BotoCoreError) as exc:
            # The advancer republishes every cycle; the change reaches the edge then.
            runtime.logger.warning("edge_config_not_published", extra={"error": str(exc)})
        from urr_vwr_lambda.page_routes import refresh_page

        refresh_page(runtime, event_id)  # the waiting page's document names the method
        return json_response(201 if existing is None else 200, {**_admin_view(state), **gate_view})

    @router.post("/vwr/admin/events/<event_id>/advance")
    def advance(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        by = _int_field(read_json_body(router), "by", 1, MAX_BATCH)
        if by is None:
            raise VwrProblem(422, "validation_failed", "by is required")
        try:
            outcome = advance_event(
                runtime,
                event_id,
                requested=by,
                interval_s=runtime.settings.advancer.step_interval_s,
                measure_rate=False,
            )
        except EventNotFound as exc:
            raise VwrProblem(404, "event_not_found", f"no waiting room for {event_id}") from exc
        _refuse_unavailable(outcome.limited_by)
        return json_response(200, outcome.to_dict())

    @router.post("/vwr/admin/events/<event_id>/reset")
    def reset(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        try:
            state = runtime.store.reset_event(event_id, now_ms=runtime.now_ms())
        except EventNotFound as exc:
            raise VwrProblem(404, "event_not_found", f"no waiting room for {event_id}") from exc
        return json_response(200, _admin_view(state))

    @router.post("/vwr/admin/events/<event_id>/order-seed/reveal")
    def reveal_order_seed(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        return _reveal_route(runtime, event_id)

    add_access_code_routes(router, runtime)
    from urr_vwr_lambda.page_routes import add_page_routes

    add_page_routes(router, runtime)
    return router
