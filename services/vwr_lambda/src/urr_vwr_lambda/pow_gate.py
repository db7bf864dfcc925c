"""The proof-of-work gate of assign (issue 15): the challenge route and the check assign runs.

``GET /vwr/challenge/{eventId}`` hands out a signed challenge (``proof_of_work``) when the
event's ``botChallenge`` is ``pow``. ``POST /vwr/assign/{eventId}`` then carries
``"pow": {"challenge": ..., "counter": ...}``; ``check_assign`` verifies it and records its use
before any number is taken, so a refused assign writes nothing. Refusals are problems with the
codes ``pow_required``, ``pow_invalid``, ``pow_expired``, ``pow_wrong_event`` (403) and
``pow_replayed`` (409).

The challenges are signed with HMAC-SHA256, not with the ES256 key of the Tier-1 token: only
this function ever verifies them, so a public-key signature buys nothing, and an HMAC costs a
few microseconds where an ES256 verification costs a hundred times more (``bench/vwr_pow.py``)
on a route bots call on purpose. The key is derived from the signing key every container
already loads (or set as ``URR_POW__SECRET``), so there is no second secret to provision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from urr_vwr_lambda import proof_of_work
from urr_vwr_lambda.problem import VwrProblem
from urr_vwr_lambda.store import EventState

if TYPE_CHECKING:
    from collections.abc import Callable

    from urr_common.tokens import SigningKey
    from urr_vwr_lambda.runtime import VwrRuntime
    from urr_vwr_lambda.settings import PowSettings

POW = "pow"
BOT_CHALLENGES = ("none", POW)
_HKDF_INFO = b"urr-vwr proof-of-work challenge v1"


def pow_key(settings: PowSettings, signing_key: Callable[[], SigningKey]) -> bytes:
    """The HMAC key: the configured secret, else HKDF-SHA256 of the signing key's scalar."""
    if settings.secret is not None:
        return settings.secret.get_secret_value().encode("utf-8")
    scalar = signing_key().private_key.private_numbers().private_value.to_bytes(32, "big")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(scalar)


def challenge_url(event_id: str) -> str:
    return f"/vwr/challenge/{event_id}"


def _event(runtime: VwrRuntime, event_id: str) -> EventState | None:
    """The event's settings, from the warm container's copy (at most ``counters_cache_s``
    old) when it has one, else read."""
    state = runtime.event_cache.get(event_id)
    if state is None:
        state = runtime.store.get_event(event_id)
        if state is not None:
            runtime.event_cache.put(state)
    return state


def _refusal(event_id: str, code: str, detail: str) -> VwrProblem:
    status = 409 if code == "pow_replayed" else 403
    return VwrProblem(status, code, detail, challenge=challenge_url(event_id))


def check_assign(runtime: VwrRuntime, event_id: str, request_id: str, solution: Any) -> bool:
    """Refuse an assign the event's gate does not let through; True when a solution was used.

    Runs before the number is taken. The event's settings may come from a copy up to
    ``counters_cache_s`` old; ``assign_place`` checks the fresh read again (``require_solved``).
    """
    state = _event(runtime, event_id)
    if state is None or state.bot_challenge != POW:
        return False  # no such event (assign answers 404) or no gate: a solution is ignored
    if solution is None:
        raise _refusal(
            event_id, "pow_required", "this event asks for a proof of work: fetch a challenge"
        )
    try:
        solved = proof_of_work.verify(
            solution,
            keys=(runtime.pow_key,),
            event_id=event_id,
            required_bits=state.pow_bits,
            now_s=runtime.now_s(),
        )
    except proof_of_work.PowRefused as refused:
        runtime.count("PowRefused")
        raise _refusal(event_id, refused.code, refused.detail) from refused
    used = runtime.pow_store.record_use(
        event_id, solved.nonce, request_id=request_id, expires_at=solved.expires_at
    )
    if not used:
        runtime.count("PowReplayed")
        raise _refusal(event_id, "pow_replayed", "this solution has been used already")
    return True


def solved_enough(state: EventState, solved: bool) -> bool:
    """Whether an assign may take a place: the event asks for no work, or it was solved."""
    return state.bot_challenge != POW or solved


def require_solved(state: EventState, solved: bool) -> None:
    """The fresh read's word: an event that asks for work gets none taken without it."""
    if not solved_enough(state, solved):
        raise _refusal(
            state.event_id,
            "pow_required",
            "this event asks for a proof of work: fetch a challenge",
        )


def build_challenge_router(runtime: VwrRuntime) -> Router:
    from urr_vwr_lambda.api import json_response, require_event_id

    router = Router()  # type: ignore[no-untyped-call]

    @router.get("/vwr/challenge/<event_id>")
    def challenge(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        state = _event(runtime, event_id)
        if state is None:
            raise VwrProblem(404, "event_not_found", f"no waiting room for event {event_id}")
        if state.bot_challenge != POW:
            return json_response(200, {"eventId": event_id, "botChallenge": "none"})
        issued = proof_of_work.issue(
            runtime.pow_key,
            event_id=event_id,
            bits=state.pow_bits,
            now_s=runtime.now_s(),
            ttl_s=runtime.settings.pow.challenge_ttl_s,
        )
        runtime.count("PowChallenge")
        return json_response(
            200,
            {
                "eventId": event_id,
                "botChallenge": POW,
                "challenge": issued.text,
                "bits": issued.bits,
                "expiresAt": issued.expires_at,
                "algorithm": proof_of_work.ALGORITHM,
            },
        )

    return router
