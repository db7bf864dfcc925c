"""The waiting-room API function (API Gateway REST v1 proxy events; HTTP API v2 accepted too).

Routes (the edge serves them under ``/vwr-api``):
``POST /vwr/assign/{eventId}``, ``GET /vwr/check/{eventId}/{requestId}``,
``GET /vwr/status/{eventId}``, and the admin routes of ``admin.py``. Problems are
``application/problem+json`` with a stable ``code``; bad input never becomes a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import replace
from typing import Any

from aws_lambda_powertools.event_handler import (
    APIGatewayHttpResolver,
    APIGatewayRestResolver,
    Response,
)
from aws_lambda_powertools.event_handler.api_gateway import BaseRouter, Router
from aws_lambda_powertools.shared.cookies import Cookie, SameSite

from urr_common.fairness import QueueMethod
from urr_common.tokens import TokenError
from urr_vwr_lambda import pow_gate, tier1
from urr_vwr_lambda.access import AccessIdentity
from urr_vwr_lambda.events import event_shape_problem
from urr_vwr_lambda.gates.guard import guarded_assign
from urr_vwr_lambda.ids import is_event_id, parse_request_id
from urr_vwr_lambda.problem import PROBLEM_CONTENT_TYPE, VwrProblem, bad_request, problem_body
from urr_vwr_lambda.queueing import (
    eta_seconds,
    etag_matches,
    is_admitted,
    people_ahead,
    poll_after_seconds,
    strong_etag,
)
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.settings import TOKEN_COOKIE
from urr_vwr_lambda.store import (
    POSITION_TTL_S,
    ClaimHeld,
    EventNotFound,
    EventState,
    Place,
    RoomInactive,
    UserClaim,
)

MAX_BODY_BYTES = 16 * 1024
JSON = "application/json"
Handler = Callable[[Any, Any], dict[str, Any]]


def json_response(
    status: int,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    cookies: list[Cookie] | None = None,
) -> Response[str]:
    merged = {"Cache-Control": "no-store", **(headers or {})}
    return Response(
        status_code=status,
        content_type=JSON,
        body=json.dumps(body, separators=(",", ":")),
        headers=merged,
        cookies=cookies,
    )


def problem_response(problem: VwrProblem, instance: str | None = None) -> Response[str]:
    headers = {"Cache-Control": "no-store", **problem.headers}
    return Response(
        status_code=problem.status,
        content_type=PROBLEM_CONTENT_TYPE,
        body=json.dumps(problem.body(instance)),
        headers=headers,
    )


def require_event_id(event_id: str) -> str:
    if not is_event_id(event_id):
        raise bad_request("the event id is 1-64 letters, digits, '-' or '_'", "bad_event_id")
    return event_id


def request_header(resolver: BaseRouter, name: str) -> str | None:
    """A request header by case-insensitive name (powertools' header map)."""
    value = resolver.current_event.headers.get(name)
    return value if isinstance(value, str) else None


def read_json_body(resolver: BaseRouter) -> dict[str, Any]:
    """The request body as a JSON object; empty means ``{}``; anything else is a 4xx."""
    event = resolver.current_event
    raw = event.get("body")
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise bad_request("the body must be a string")
    if event.get("isBase64Encoded"):
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise bad_request("the body is not valid base64") from exc
    else:
        data = raw.encode("utf-8", "surrogatepass")
    if len(data) > MAX_BODY_BYTES:
        raise VwrProblem(413, "payload_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    content_type = (request_header(resolver, "content-type") or JSON).lower()
    if not content_type.split(";")[0].strip().endswith(("/json", "+json")):
        raise VwrProblem(415, "unsupported_media_type", "send application/json")
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise bad_request("the body is not valid JSON", "malformed_json") from exc
    if not isinstance(parsed, dict):
        raise VwrProblem(422, "validation_failed", "the body must be a JSON object")
    return parsed


def request_cookie(resolver: BaseRouter, name: str) -> str | None:
    """A cookie's value from the ``Cookie`` header (v1) or the ``cookies`` list (v2)."""
    event = resolver.current_event
    raw: list[str] = []
    v2_cookies = event.get("cookies")
    if isinstance(v2_cookies, list):
        raw.extend(c for c in v2_cookies if isinstance(c, str))
    header = request_header(resolver, "cookie")
    if header:
        raw.extend(header.split(";"))
    for part in raw:
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value.strip().strip('"')
    return None


def bearer_token(resolver: BaseRouter) -> str | None:
    header = request_header(resolver, "authorization")
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def caller_identity(runtime: VwrRuntime, resolver: BaseRouter) -> AccessIdentity | None:
    """The logged-in user, if any.

    A bad ``Authorization: Bearer`` is a 401 (the caller chose to send it). A bad
    ``access_token`` cookie (expired, say) is ignored: the browser sends it on its own, and a
    stale login must not lock anyone out of the waiting room; they simply wait anonymously.
    """
    bearer = bearer_token(resolver)
    if bearer:
        try:
            return runtime.access_verifier.verify(bearer)
        except TokenError as exc:
            raise VwrProblem(
                401,
                "access_token_invalid",
                f"the access token was refused ({exc.reason})",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            ) from exc
    cookie = request_cookie(resolver, "access_token")
    if cookie:
        try:
            return runtime.access_verifier.verify(cookie)
        except TokenError:
            runtime.logger.info("access_cookie_ignored")
    return None


def admit_rate(runtime: VwrRuntime, state: EventState) -> float:
    """Admissions per second for the ETA: the advancer's measure, else the planned pace."""
    if state.admit_rate is not None and state.admit_rate > 0:
        return state.admit_rate
    interval = runtime.settings.advancer.step_interval_s
    return state.batch_size / interval if interval > 0 else 0.0


def waiting_figures(runtime: VwrRuntime, state: EventState, position: int) -> dict[str, Any]:
    poll = runtime.settings.poll
    if state.queue_method is QueueMethod.RANDOM:
        # The draw decides who goes next: how many are ahead is not known until then.
        waiting = max(0, state.next_position - state.serving_counter)
        return {
            "position": position,
            "ahead": None,
            "servingCounter": state.serving_counter,
            "etaSeconds": None,
            "pollAfterSeconds": poll_after_seconds(-1, waiting, min_s=poll.min_s, max_s=poll.max_s),
            "queueMethod": state.queue_method.value,
        }
    ahead = people_ahead(position, state.serving_counter)
    eta = eta_seconds(ahead, admit_rate(runtime, state))
    return {
        "position": position,
        "ahead": ahead,
        "servingCounter": state.serving_counter,
        "etaSeconds": eta if eta >= 0 else None,
        "pollAfterSeconds": poll_after_seconds(eta, ahead, min_s=poll.min_s, max_s=poll.max_s),
        "queueMethod": state.queue_method.value,
    }


def build_public_router(runtime: VwrRuntime) -> Router:
    router = Router()  # type: ignore[no-untyped-call]

    @router.post("/vwr/assign/<event_id>")
    def assign(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        body = read_json_body(router)
        request_id = parse_request_id(body.get("requestId"))
        if request_id is None:
            raise VwrProblem(422, "bad_request_id", "requestId must be a UUID the client generated")
        identity = caller_identity(runtime, router)
        user_id = identity.user_id if identity else None
        # The proof of work first: a bot without a solution never reaches the caps or codes.
        solved = pow_gate.check_assign(runtime, event_id, request_id, body.get("pow"))
        status, place, state = guarded_assign(
            runtime.gates,
            router.current_event.raw_event,
            event_id,
            request_id,
            user_id,
            body,
            lambda: assign_place(runtime, event_id, request_id, user_id, pow_solved=solved),
            now_s=runtime.now_s(),
        )
        runtime.count("AssignNew" if status == 201 else "AssignRepeat")
        figures = waiting_figures(runtime, state, place.position)
        if place.prequeue:
            # Let in at its first check, onto Tier 2's roster (the number decides nothing).
            figures = {
                **figures,
                "prequeue": True,
                "saleStart": state.public().get("saleStart"),
                "pollAfterSeconds": runtime.settings.poll.min_s,
            }
        return json_response(
            status, {"eventId": event_id, "requestId": place.request_id, **figures}
        )

    @router.get("/vwr/check/<event_id>/<request_id>")
    def check(event_id: str, request_id: str) -> Response[str]:
        return check_place(runtime, router, require_event_id(event_id), request_id)

    @router.get("/vwr/status/<event_id>")
    def status(event_id: str) -> Response[str]:
        state = runtime.store.get_event(require_event_id(event_id))
        if state is None:
            raise VwrProblem(404, "event_not_found", f"no waiting room for event {event_id}")
        body = state.public()
        etag = strong_etag(body)
        cache = runtime.settings.status_cache
        headers = {
            "ETag": etag,
            "Cache-Control": (
                f"public, max-age={cache.max_age_s}, "
                f"stale-while-revalidate={cache.stale_while_revalidate_s}"
            ),
        }
        if etag_matches(request_header(router, "if-none-match"), etag):
            return Response(status_code=304, headers=headers, body="")
        return json_response(200, body, headers=headers)

    return router


def assign_place(
    runtime: VwrRuntime,
    event_id: str,
    request_id: str,
    user_id: str | None,
    *,
    pow_solved: bool = False,
) -> tuple[int, Place, EventState]:
    """``(201, new place)`` or ``(200, the place this request or user already holds)``.

    A first assign takes its number first and writes its place (and a logged-in caller's
    claim, on the condition that the user holds no current claim) with the event the number's
    write returned (``_assign_without_read``): three DynamoDB calls in two round trips
    anonymous, four in three logged in. Whatever that path cannot decide alone (a claim
    already held: a second tab, a retry; or an event that would refuse) reads the event, the
    place and the claim and answers as before, with the number already taken. A retry, or a
    second tab of a logged-in user, leaves its number unused (the advancer passes it at no
    cost).
    """
    store = runtime.store
    now_s, now_ms = runtime.now_s(), runtime.now_ms()
    answered, reservation = _assign_without_read(
        runtime, event_id, request_id, user_id, pow_solved, now_s=now_s, now_ms=now_ms
    )
    if answered is not None:
        return answered
    try:
        state, place, claim = store.read_assignment(event_id, request_id, user_id)
        if state is None:
            raise VwrProblem(404, "event_not_found", f"no waiting room for event {event_id}")
        if state.prequeue_not_open(now_ms):
            raise prequeue_not_open(state)
        if place is not None and place.current(state.epoch, now_s):
            return 200, place, state
        held, stale_owner = _users_place(runtime, state, claim, request_id, now_s)
        if held is not None:
            return 200, held, state
        if not state.is_active:
            raise room_inactive(event_id)
        if state.queue_method is QueueMethod.REJECT:
            raise event_closed(event_id)
        pow_gate.require_solved(state, pow_solved)
        try:
            position, epoch = reservation.result()
        except RoomInactive as exc:
            raise room_inactive(event_id) from exc
        except EventNotFound as exc:
            raise VwrProblem(
                404, "event_not_found", f"no waiting room for event {event_id}"
            ) from exc
        current = replace(state, next_position=position, epoch=epoch)
        return _write_place(
            runtime, current, request_id, user_id, stale_owner, now_s=now_s, now_ms=now_ms
        )
    finally:
        # Every way out waits for the number: a Lambda environment is frozen when the handler
        # returns, and a write still running on the side thread would finish during some
        # later invocation. It ran beside the read, so this rarely waits at all.
        futures.wait([reservation])


def _assign_without_read(
    runtime: VwrRuntime,
    event_id: str,
    request_id: str,
    user_id: str | None,
    pow_solved: bool,
    *,
    now_s: int,
    now_ms: int,
) -> tuple[tuple[int, Place, EventState] | None, futures.Future[tuple[int, int]]]:
    """A first assign without the read: the answer, or ``None`` and the reservation made for
    the full path (``assign_place``) to use.

    The number's conditional ADD returns the whole event item (as fresh as a consistent read),
    and the place's conditional put refuses to replace a current place, so the read of the
    event and of this request's place is not needed to take a new place: a repeat is found
    when its put is refused, and answered from the place then read (as the full path would).
    A logged-in caller's claim is put first on the condition that the user holds no current
    claim (``fresh_claim``): then the read would have found none, and the full path would
    have written the same claim. A claim already held (a second tab, a retry after a lost
    answer, a racing duplicate) refuses that put, and the full path reads the claim and
    decides as it always did; the line item written beside the refused put names this
    request at the number the full path then uses (the same item again), or names a request
    without a place at that number, which the advancer's walk skips.
    Whatever the event would refuse (the room off, not open yet, no such event, ``reject``,
    a proof of work missing) goes to the full path, which reads and answers exactly as before
    (a repeat keeps its place even then); the number, if one was taken, is the one it uses.
    """
    reservation: futures.Future[tuple[int, int]] = futures.Future()
    try:
        state = runtime.store.reserve(event_id, now_ms=now_ms)
    except (RoomInactive, EventNotFound) as exc:
        reservation.set_exception(exc)  # no number was taken
        return None, reservation
    reservation.set_result((state.next_position, state.epoch))
    runtime.event_cache.put(state)  # fresher than any copy the container holds
    if state.queue_method is QueueMethod.REJECT or not pow_gate.solved_enough(state, pow_solved):
        return None, reservation
    try:
        answer = _write_place(
            runtime, state, request_id, user_id, None, now_s=now_s, now_ms=now_ms, fresh_claim=True
        )
    except ClaimHeld:
        return None, reservation
    return answer, reservation


def _write_place(
    runtime: VwrRuntime,
    state: EventState,
    request_id: str,
    user_id: str | None,
    stale_owner: str | None,
    *,
    now_s: int,
    now_ms: int,
    fresh_claim: bool = False,
) -> tuple[int, Place, EventState]:
    """Write the place holding number ``state.next_position``: ``(201, it)``, or ``(200, the
    place of whoever won)`` when the conditional put lost (a repeat or a racing duplicate).
    ``fresh_claim``: the user's claim is written only if none is current (``ClaimHeld``
    otherwise, nothing else written but the line item)."""
    store = runtime.store
    event_id, position, epoch = state.event_id, state.next_position, state.epoch
    prequeue = state.in_prequeue(now_ms)
    written = store.put_place(
        event_id,
        request_id,
        position=position,
        epoch=epoch,
        user_id=user_id,
        now_s=now_s,
        stale_owner=stale_owner,
        prequeue=prequeue,
        fresh_claim=fresh_claim,
    )
    if not written:
        # Our own PutItem may have landed before botocore retried it after a lost answer.
        mine = store.get_place(event_id, request_id)
        written = mine is not None and mine.position == position and mine.epoch == epoch
        if not written and mine is not None and mine.current(epoch, now_s):
            return 200, mine, state  # this request already holds a place (a repeat)
    if written:
        new_place = Place(
            event_id=event_id,
            request_id=request_id,
            position=position,
            epoch=epoch,
            user_id=user_id,
            last_seen=now_s,
            expires_at=now_s + POSITION_TTL_S,
            abandoned=False,
            token=None,
            token_exp=None,
            prequeue=prequeue,
        )
        runtime.place_cache.put(new_place)
        return 201, new_place, state
    return 200, _race_winner(runtime, event_id, request_id, user_id, epoch, now_s), state


def _users_place(
    runtime: VwrRuntime,
    state: EventState,
    claim: UserClaim | None,
    request_id: str,
    now_s: int,
) -> tuple[Place | None, str | None]:
    """The live place a logged-in user already holds (from another tab), and a stale owner.

    The stale owner is the request id a current claim names whose place is gone (abandoned,
    expired): the new place may take the claim over from it.
    """
    if claim is None or not claim.current(state.epoch, now_s):
        return None, None
    if claim.owner_request_id != request_id:
        young = now_s - claim.claimed_at_s < _CLAIM_IN_FLIGHT_S
        reads = _IN_FLIGHT_READS if young else 1
        owner = _claimed_place(runtime, state.event_id, claim.owner_request_id, reads)
        if owner is not None and owner.current(state.epoch, now_s):
            return owner, None
        if owner is None and young:
            # The claim is written before its place: a young claim whose place is missing is
            # another tab still writing it, not a crashed one. Taking it over here gave one
            # account two places under load; the tab retries and then finds that place.
            runtime.count("AssignRaceLost")
            raise VwrProblem(409, "assign_conflict", "another tab is taking this place; retry")
    return None, claim.owner_request_id


def _claimed_place(runtime: VwrRuntime, event_id: str, request_id: str, reads: int) -> Place | None:
    """The place a claim names, looked for again a moment later while it may be in flight."""
    for attempt in range(reads):
        if attempt:
            time.sleep(_RACE_READ_PAUSE_S * attempt)
        place = runtime.store.get_place(event_id, request_id)
        if place is not None:
            return place
    return None


def _race_winner(
    runtime: VwrRuntime,
    event_id: str,
    request_id: str,
    user_id: str | None,
    epoch: int,
    now_s: int,
) -> Place:
    """A racing duplicate (same request id, or the same user in another tab) won.

    Its place stands; the number just taken stays unused (the advancer passes it at no cost).
    """
    runtime.count("AssignRaceLost")
    store = runtime.store
    # The winner writes its claim, then its place: a loser reading in between finds the
    # claim but not yet the place, so it looks again a moment later before giving up.
    for attempt in range(_RACE_READS):
        if attempt:
            time.sleep(_RACE_READ_PAUSE_S * attempt)
        winner = store.get_place(event_id, request_id)
        if winner is None or not winner.current(epoch, now_s):
            claimed = store.get_claim(event_id, user_id) if user_id else None
            winner = store.get_place(event_id, claimed.owner_request_id) if claimed else None
        if winner is not None and winner.current(epoch, now_s):
            return winner
    raise VwrProblem(409, "assign_conflict", "a concurrent assign interfered; retry")


_RACE_READS = 3
_RACE_READ_PAUSE_S = 0.05
#: A claim younger than this whose place is missing is being written, not abandoned by a crash
#: (which is then recovered this much later).
_CLAIM_IN_FLIGHT_S = 10
#: Reads of a young claim's place before answering 409 (pauses 0.05 s, 0.1 s, ...: 1.4 s).
_IN_FLIGHT_READS = 8


def prequeue_not_open(state: EventState) -> VwrProblem:
    """Before the pre-queue opens nobody takes a place (nothing is written). Both times ride
    along: the waiting page shows them and comes back just after ``prequeueStart``."""
    public = state.public()
    opens = public.get("prequeueStart")
    return VwrProblem(
        409,
        "prequeue_not_open",
        f"the pre-queue of event {state.event_id} opens at {opens}",
        prequeueStart=opens,
        saleStart=public.get("saleStart"),
    )


def event_closed(event_id: str) -> VwrProblem:
    """The queueing method ``reject``: nobody waits (the page says sold out / closed)."""
    return VwrProblem(
        409,
        "event_closed",
        f"event {event_id} takes nobody into its waiting room: it is sold out or closed",
    )


def still_waiting(state: EventState, event_id: str) -> None:
    """A place not let in waits on, unless the room is off or takes nobody (4xx)."""
    if not state.is_active:
        raise room_inactive(event_id)
    if state.queue_method is QueueMethod.REJECT:
        raise event_closed(event_id)


def granted_copy(runtime: VwrRuntime, state: EventState, place: Place) -> Place:
    """Random method: a grant is written to the place, not the counters, so a warm copy of a
    place not granted yet is read again (one read per check of a waiting random place)."""
    if state.queue_method is not QueueMethod.RANDOM or place.grant_seq is not None:
        return place
    stored = runtime.store.get_place(place.event_id, place.request_id)
    if stored is None:
        return place
    runtime.place_cache.put(stored)
    return stored


def let_in(state: EventState, place: Place) -> bool:
    """Whether this place is admitted now, by the event's queueing method.

    Random: the advancer granted it, or the floor passed it while its line item was still
    being written (as FIFO lets in a number the serving counter passed).
    """
    if state.queue_method is QueueMethod.PASSTHROUGH or place.prequeue:
        # A pre-queue place goes on to Tier 2's roster at once (its shuffle decides).
        return True
    if state.queue_method is QueueMethod.RANDOM:
        return place.grant_seq is not None or place.position <= state.line_floor
    return is_admitted(place.position, state.serving_counter)


def room_inactive(event_id: str) -> VwrProblem:
    return VwrProblem(
        409,
        "room_inactive",
        f"the waiting room of event {event_id} is not active: go straight in",
    )


def check_place(
    runtime: VwrRuntime, resolver: BaseRouter, event_id: str, raw_request_id: str
) -> Response[str]:
    request_id = parse_request_id(raw_request_id)
    if request_id is None:
        raise bad_request("the request id is not a UUID", "bad_request_id")
    store = runtime.store
    now_s = runtime.now_s()
    state, place, warm_copy = read_check(runtime, event_id, request_id)
    if state is None:
        raise VwrProblem(404, "event_not_found", f"no waiting room for event {event_id}")
    if place is None or place.epoch != state.epoch or place.expires_at <= now_s:
        if place is not None:
            runtime.place_cache.forget(event_id, request_id)
        raise VwrProblem(404, "position_not_found", "this request id holds no place for this event")
    if place.abandoned:
        raise position_abandoned()
    if place.spent_at is not None:
        raise place_spent()
    runtime.count("Check")
    if warm_copy:
        place = granted_copy(runtime, state, place)
    if let_in(state, place):
        if warm_copy and reusable_token(place, now_s):
            place = fresh_admitted_place(runtime, place)
        return admitted_response(runtime, state, place, now_s)
    still_waiting(state, event_id)
    poll = runtime.settings.poll
    if now_s - place.last_seen >= poll.last_seen_write_interval_s:
        # The write is conditional on the place not being given up, so a stale cached copy
        # still learns here that the advancer marked it abandoned.
        if not store.touch(place, now_s=now_s):
            runtime.place_cache.forget(event_id, request_id)
            raise position_abandoned()
        runtime.place_cache.put(replace(place, last_seen=now_s))
    figures = waiting_figures(runtime, state, place.position)
    return json_response(
        200, {"eventId": event_id, "requestId": request_id, "admitted": False, **figures}
    )


def read_check(
    runtime: VwrRuntime, event_id: str, request_id: str
) -> tuple[EventState | None, Place | None, bool]:
    """The event and the place, from the warm container's copies when it has them, and
    whether the place is such a copy.

    A place seen before costs at most a counters read (one a second per container); a new one
    costs a strongly consistent read of the place alone while the counters copy is fresh (the
    copy is the same promise as the eventually consistent read it replaces), else the single
    batched read of both. In the crowd a check often lands on a container that did not assign
    its place (its own is busy) but read the counters less than a second ago: a ``GetItem`` of
    one item then costs that container and DynamoDB less than the ``BatchGetItem`` of two.
    """
    events, places = runtime.event_cache, runtime.place_cache
    place = places.get(event_id, request_id)
    state = events.get(event_id)
    warm_copy = place is not None
    if place is None and state is not None:
        place = runtime.store.get_place(event_id, request_id)
        if place is not None:
            places.put(place)
        if place is None or place.epoch <= state.epoch:
            return state, place, False  # the copy keeps its age, or it would never refresh
        # A place of a later run than the copy knows: the room was reset since the copy was
        # taken, so the counters are read again (a stale epoch must not refuse the place).
        state = runtime.store.get_event(event_id)
        if state is not None:
            events.put(state)
        return state, place, False
    if place is None:
        state, place = runtime.store.read_check(event_id, request_id)
        if place is not None:
            places.put(place)
    elif state is None:
        state = runtime.store.get_event(event_id)
    else:
        return state, place, True  # both copies: keep the counters' age, or they never refresh
    if state is not None:
        events.put(state)
    return state, place, warm_copy


def reusable_token(place: Place, now_s: int) -> bool:
    """The place's stored token goes out again as it is (no write that could catch a mark)."""
    return (
        place.token is not None
        and place.token_exp is not None
        and place.token_exp - now_s >= _MIN_TOKEN_LIFE_S
    )


def fresh_admitted_place(runtime: VwrRuntime, place: Place) -> Place:
    """The stored row of an admitted place held as a warm copy with a token to hand out.

    Tier 2 marks a place spent once the stay it admitted is over (``spentAt``), long after the
    copy was taken: a stored token is not handed out again from a copy without reading the row.
    A new token needs no such read (its conditional write refuses a spent place), nor does a
    waiting place (only an admitted one can be spent); an admitted visitor leaves the page, so
    this read is about one per admission.
    """
    stored = runtime.store.get_place(place.event_id, place.request_id)
    if stored is None or stored.epoch != place.epoch:
        runtime.place_cache.forget(place.event_id, place.request_id)
        raise VwrProblem(404, "position_not_found", "this request id holds no place for this event")
    runtime.place_cache.put(stored)
    if stored.abandoned:
        raise position_abandoned()
    if stored.spent_at is not None:
        raise place_spent()
    return stored


def position_abandoned() -> VwrProblem:
    return VwrProblem(
        410,
        "position_abandoned",
        "this place was given up after its checks stopped; take a new place",
    )


def place_spent() -> VwrProblem:
    return VwrProblem(
        410,
        "place_spent",
        "this place has already let its holder in once and that visit is over; a place admits "
        "once, so coming back means a new place at the back of the line",
    )


#: A stored token with less than this left is replaced rather than handed out again.
_MIN_TOKEN_LIFE_S = 60


def signed_position(state: EventState, place: Place) -> int:
    """The number the pass carries, by which Tier 2 orders its queue.

    Random: the grant sequence (Tier 2 then sees passes numbered in the order of the draw);
    a place the floor passed unread gets the current count, a number already let in, so it
    goes next in Tier 2 rather than waiting for a number of its own.
    """
    if state.queue_method is QueueMethod.RANDOM:
        return place.grant_seq or max(1, state.serving_counter)
    return place.position


def admitted_response(
    runtime: VwrRuntime, state: EventState, place: Place, now_s: int
) -> Response[str]:
    token, token_exp = place.token, place.token_exp
    if token is None or token_exp is None or not reusable_token(place, now_s):
        signer = runtime.signer
        fresh = tier1.issue(
            signer,
            event_id=place.event_id,
            request_id=place.request_id,
            position=signed_position(state, place),
            user_id=place.user_id,
            now=now_s,
            prequeue_sale_ms=state.sale_start_ms if place.prequeue else None,
        )
        stored = runtime.store.record_admission(
            place, token=fresh, token_exp=now_s + signer.ttl_s, now_s=now_s
        )
        if stored is not None and stored.spent_at is not None:
            runtime.place_cache.put(stored)
            raise place_spent()
        if stored is None or stored.token is None or stored.token_exp is None:
            runtime.place_cache.forget(place.event_id, place.request_id)
            raise position_abandoned()
        runtime.place_cache.put(stored)
        token, token_exp = stored.token, stored.token_exp
        runtime.count("Admitted")
    cookie = Cookie(
        name=TOKEN_COOKIE,
        value=token,
        path=runtime.settings.cookie.path,
        secure=runtime.settings.cookie.secure,
        http_only=True,
        max_age=max(0, token_exp - now_s),
        same_site=SameSite.LAX_MODE,
    )
    body = {
        "eventId": place.event_id,
        "requestId": place.request_id,
        "admitted": True,
        "position": place.position,
        "ahead": 0,
        "servingCounter": state.serving_counter,
        "etaSeconds": 0,
        "token": token,
        "tokenExpiresAt": token_exp,
    }
    if place.prequeue:
        body["prequeue"] = True
        body["saleStart"] = state.public().get("saleStart")
    return json_response(200, body, cookies=[cookie])


def build_resolvers(
    runtime: VwrRuntime,
) -> tuple[APIGatewayRestResolver, APIGatewayHttpResolver]:
    from urr_vwr_lambda.admin import build_admin_router

    resolvers = (APIGatewayRestResolver(), APIGatewayHttpResolver())
    for resolver in resolvers:
        resolver.include_router(build_public_router(runtime))
        resolver.include_router(build_admin_router(runtime))
        resolver.include_router(pow_gate.build_challenge_router(runtime))
        _install_error_handlers(runtime, resolver)
    return resolvers


def _install_error_handlers(runtime: VwrRuntime, resolver: Any) -> None:
    def on_problem(problem: VwrProblem) -> Response[str]:
        runtime.count(f"Problem{problem.status}")
        return problem_response(problem, _instance(resolver))

    def on_not_found(_: Exception) -> Response[str]:
        return problem_response(
            VwrProblem(404, "not_found", "no such route (check the method and path)"),
            _instance(resolver),
        )

    def on_error(exc: Exception) -> Response[str]:
        runtime.logger.exception("unhandled_error")
        runtime.count("Problem500")
        return problem_response(
            VwrProblem(500, "internal_error", "the server failed; it has been logged"),
            _instance(resolver),
        )

    resolver.exception_handler(VwrProblem)(on_problem)
    resolver.not_found(on_not_found)
    resolver.exception_handler(Exception)(on_error)


def _instance(resolver: Any) -> str | None:
    path = resolver.current_event.get("path") or resolver.current_event.get("rawPath")
    return path[:512] if isinstance(path, str) else None


def make_handler(runtime_factory: Callable[[], VwrRuntime]) -> Handler:
    """A Lambda entry point whose runtime (settings, clients) is built on the first call.

    powertools' resolvers keep the request at hand in class attributes (``BaseRouter.
    current_event``), so a process runs one invocation at a time, exactly like a Lambda
    container; the local API Gateway emulator gets concurrency from several worker processes.
    """
    built: list[tuple[VwrRuntime, APIGatewayRestResolver, APIGatewayHttpResolver]] = []
    lock = threading.Lock()

    def handle(event: Any, context: Any) -> dict[str, Any]:
        is_v2 = isinstance(event, dict) and event.get("version") == "2.0"
        problem = event_shape_problem(event, v2=is_v2)
        if problem is not None:
            return _raw_problem(problem, v2=is_v2)
        with lock:
            if not built:
                runtime = runtime_factory()
                built.append((runtime, *build_resolvers(runtime)))
            runtime, rest, http = built[0]
            refused = runtime.gates.origin_problem(event)
            if refused is not None:
                return _raw_problem(refused, v2=is_v2)
            context_of_request = event.get("requestContext")
            if isinstance(context_of_request, dict):
                runtime.logger.set_correlation_id(str(context_of_request.get("requestId", "")))
            try:
                answer: dict[str, Any] = (http if is_v2 else rest).resolve(event, context)
                return answer
            finally:
                runtime.flush_metrics()

    return handle


def _raw_problem(problem: VwrProblem, *, v2: bool) -> dict[str, Any]:
    """A problem for an event too malformed to hand to the resolver."""
    body = json.dumps(problem_body(problem.status, problem.code, problem.detail))
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE, "Cache-Control": "no-store", **problem.headers}
    answer: dict[str, Any] = {
        "statusCode": problem.status,
        "headers": headers,
        "body": body,
        "isBase64Encoded": False,
    }
    if not v2:
        answer["multiValueHeaders"] = {}
    return answer


handler = make_handler(VwrRuntime.from_environment)
