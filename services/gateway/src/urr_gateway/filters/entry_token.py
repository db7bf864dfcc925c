"""Entry-token filter (order 2): seat and reservation APIs need an admitted user's token.

The Tier-2 queue signs the token (ES256, ``kid``) for one user (``sub``) and one event
(``evt``). Every method on a route that needs it is refused with 403 unless the token is
present, valid, unexpired, for the logged-in user, for the event in the path and not revoked.
Codes: ``entry_token_missing``, ``entry_token_invalid`` (bad signature, wrong issuer, or
revoked: then with ``"reason": "revoked"``), ``entry_token_expired``,
``entry_token_wrong_user``, ``entry_token_wrong_event``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter

from urr_common.problems import Forbidden, ServiceUnavailable, Unauthorized
from urr_common.tokens import BASE_REQUIRED_CLAIMS, TokenError, TokenRejection
from urr_gateway.context import IDENTITY
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.jwks import KeysUnavailable
from urr_gateway.revocation import RevocationCheck, entry_token_of
from urr_gateway.routing import ROUTE
from urr_gateway.verification import CachedTokenVerifier

ENTRY_TOKEN_ORDER = 2
ENTRY_REQUIRED_CLAIMS = (*BASE_REQUIRED_CLAIMS, "evt", "jti")


@dataclass(frozen=True, slots=True)
class EntryClaims:
    user_id: str
    event_id: str
    jti: str


def entry_claims(claims: dict[str, Any]) -> EntryClaims:
    values = [claims.get("sub"), claims.get("evt"), claims.get("jti")]
    if not all(isinstance(value, str) and value for value in values):
        raise TokenError(TokenRejection.MISSING_CLAIM, "sub, evt and jti must be strings")
    user_id, event_id, jti = (str(value) for value in values)
    return EntryClaims(user_id=user_id, event_id=event_id, jti=jti)


def claims_mismatch(claims: EntryClaims, user_id: str, event_id: str | None) -> str | None:
    """The refusal code when a valid token is for someone or something else."""
    if claims.user_id != user_id:
        return "entry_token_wrong_user"
    if claims.event_id != event_id:
        return "entry_token_wrong_event"
    return None


def rejection_code(reason: TokenRejection) -> str:
    return "entry_token_expired" if reason is TokenRejection.EXPIRED else "entry_token_invalid"


_DETAILS = {
    "entry_token_missing": "this API needs an entry token from the queue",
    "entry_token_invalid": "the entry token is not valid",
    "entry_token_expired": "the entry token has expired; queue again",
    "entry_token_wrong_user": "the entry token belongs to another user",
    "entry_token_wrong_event": "the entry token is for another event",
}


def entry_token_filter(
    verifier: CachedTokenVerifier[EntryClaims],
    revocation: RevocationCheck,
    rejections: Counter,
) -> GatewayFilter:
    def refuse(code: str, **extensions: Any) -> Forbidden:
        rejections.labels("entry_token", extensions.get("reason", code)).inc()
        return Forbidden(_DETAILS[code], code=code, **extensions)

    @web.middleware
    async def entry_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        match = request.get(ROUTE)
        if match is None or not match.route.needs_entry_token:
            return await handler(request)
        identity = request.get(IDENTITY)
        if identity is None:  # the route needs login; the auth gate already refused
            raise Unauthorized("this route needs a logged-in user", code="login_required")
        token = entry_token_of(request)
        if not token:
            raise refuse("entry_token_missing")
        try:
            claims = await verifier.verify(token)
        except TokenError as exc:
            raise refuse(rejection_code(exc.reason)) from exc
        except KeysUnavailable as exc:
            raise ServiceUnavailable(
                "the entry token cannot be checked right now",
                code="entry_keys_unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        mismatch = claims_mismatch(claims, identity.user_id, match.event_id)
        if mismatch is not None:
            raise refuse(mismatch)
        if await revocation.is_revoked(request, identity.user_id, claims.jti):
            raise refuse("entry_token_invalid", reason="revoked")
        return await handler(request)

    return GatewayFilter(name="entry_token", order=ENTRY_TOKEN_ORDER, middleware=entry_token)
