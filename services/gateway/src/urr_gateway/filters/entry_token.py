"""Entry-token filter (order 2): seat and reservation APIs need an admitted user's token.

The Tier-2 queue signs the token (ES256, ``kid``) for one user (``sub``) and one event
(``evt``). Every method on a route that needs it is refused with 403 unless the token is
present, valid, unexpired, for the logged-in user, for the event in the path and not revoked.
Codes: ``entry_token_missing``, ``entry_token_invalid`` (bad signature, wrong issuer, or
revoked: then with ``"reason": "revoked"``), ``entry_token_expired``,
``entry_token_wrong_user``, ``entry_token_wrong_event``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter

from urr_common.problems import Forbidden, ServiceUnavailable, Unauthorized
from urr_common.tokens import BASE_REQUIRED_CLAIMS, TokenError, TokenRejection
from urr_gateway.context import IDENTITY, Identity, RequestFacts
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.jwks import KeysUnavailable
from urr_gateway.middleware import middleware
from urr_gateway.revocation import RevocationCheck, entry_token_of, facts_entry_token
from urr_gateway.routing import ROUTE, RouteMatch
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


class _EntryToken:
    def __init__(
        self,
        verifier: CachedTokenVerifier[EntryClaims],
        revocation: RevocationCheck,
        rejections: Counter,
    ) -> None:
        self._verifier = verifier
        self._revocation = revocation
        self._rejections = rejections

    def refuse(self, code: str, **extensions: Any) -> Forbidden:
        self._rejections.labels("entry_token", extensions.get("reason", code)).inc()
        return Forbidden(_DETAILS[code], code=code, **extensions)

    def token_to_check(
        self, match: RouteMatch | None, identity: Identity | None, token: str | None
    ) -> tuple[RouteMatch, Identity, str] | None:
        """What a request on this route must show (``None``: nothing to check)."""
        if match is None or not match.route.needs_entry_token:
            return None
        if identity is None:  # the route needs login; the auth gate already refused
            raise Unauthorized("this route needs a logged-in user", code="login_required")
        if not token:
            raise self.refuse("entry_token_missing")
        return match, identity, token

    def check_claims(self, claims: EntryClaims, identity: Identity, match: RouteMatch) -> None:
        mismatch = claims_mismatch(claims, identity.user_id, match.event_id)
        if mismatch is not None:
            raise self.refuse(mismatch)

    async def verify(self, token: str) -> EntryClaims:
        try:
            return await self._verifier.verify(token)
        except TokenError as exc:
            raise self.refuse(rejection_code(exc.reason)) from exc
        except KeysUnavailable as unavailable:  # (compiled: a name per clause)
            raise ServiceUnavailable(
                "the entry token cannot be checked right now",
                code="entry_keys_unavailable",
                headers={"Retry-After": "5"},
            ) from unavailable

    async def finish(
        self,
        request: web.Request,
        shown: tuple[RouteMatch, Identity, str],
        claims: EntryClaims | None,
    ) -> None:
        match, identity, token = shown
        if claims is None:
            claims = await self.verify(token)
        self.check_claims(claims, identity, match)
        if await self._revocation.is_revoked(request, identity.user_id, claims.jti):
            raise self.refuse("entry_token_invalid", reason="revoked")

    def step(self, request: web.Request, facts: RequestFacts) -> Awaitable[None] | None:
        match = facts.route
        if match is None or not match.route.needs_entry_token:
            return None
        shown = self.token_to_check(match, facts.identity, facts_entry_token(request, facts))
        if shown is None:
            return None
        _, identity, token = shown
        try:
            claims = self._verifier.verify_cached(token, facts.token_digests)
        except TokenError as exc:
            raise self.refuse(rejection_code(exc.reason)) from exc
        if claims is None:
            return self.finish(request, shown, None)
        if claims.user_id != identity.user_id or claims.event_id != match.event_id:
            self.check_claims(claims, identity, match)  # raises the refusal that applies
        verdict = self._revocation.verdict(request, identity.user_id, claims.jti)
        if verdict is None:  # the limiter did not look this key up: ask Redis
            return self.finish(request, shown, claims)
        if verdict:
            raise self.refuse("entry_token_invalid", reason="revoked")
        return None

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        shown = self.token_to_check(
            request.get(ROUTE), request.get(IDENTITY), entry_token_of(request)
        )
        if shown is not None:
            await self.finish(request, shown, None)
        return await handler(request)


def entry_token_filter(
    verifier: CachedTokenVerifier[EntryClaims],
    revocation: RevocationCheck,
    rejections: Counter,
) -> GatewayFilter:
    entry_token = _EntryToken(verifier, revocation, rejections)
    return GatewayFilter(
        name="entry_token",
        order=ENTRY_TOKEN_ORDER,
        middleware=middleware(entry_token.middleware),
        step=entry_token.step,
    )
