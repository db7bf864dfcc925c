"""JWT auth (order -1) and the auth gate (order 1): who is calling, then may they.

Identification runs before the rate limiter, refusal after it, so refusals are limited too:

- ``jwt_auth`` (-1) removes client-sent ``X-User-*`` headers on every request (no upstream
  reads them: the proxy signs the identity into ``X-Urr-Identity`` per upstream request), and
  verifies the Bearer token. A valid token publishes the identity; a bad
  one leaves the caller anonymous (limited per client address) and records the refusal. A bad
  ``access_token`` cookie is not a refusal at all: the caller is anonymous and the answer
  clears the cookie (``COOKIE_REFUSED``), so a stale cookie cannot lock a browser out of
  login and logout. Health endpoints never verify tokens.
- ``auth_gate`` (1), after the limiter: a recorded refusal is a 401 ``invalid_token`` (or 503
  when the keys cannot be had); a cookie-authenticated state-changing request from a foreign
  origin is a 403 ``csrf_refused`` (``filters.csrf``); a route that needs login refuses an
  anonymous caller (401 ``login_required``) and one that needs a role refuses other roles (403).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from prometheus_client import Counter

from urr_common.logs import bind_request_context, bind_request_value
from urr_common.problems import Forbidden, ProblemError, ServiceUnavailable, Unauthorized
from urr_common.tokens import BASE_REQUIRED_CLAIMS, TokenError, TokenRejection
from urr_gateway.context import IDENTITY, Identity, RequestFacts
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.filters.cookie_auth import FROM_COOKIE
from urr_gateway.filters.csrf import STATE_CHANGING_METHODS, csrf_allowed
from urr_gateway.forwarding import strip_identity_headers
from urr_gateway.ingress import FORWARD_HEADERS
from urr_gateway.jwks import KeysUnavailable
from urr_gateway.middleware import middleware
from urr_gateway.routing import ROUTE, RouteMatch
from urr_gateway.verification import CachedTokenVerifier

JWT_AUTH_ORDER = -1
AUTH_GATE_ORDER = 1
#: Paths that are never authenticated: a token sent there is not even looked at (``/metrics``
#: is not on the public listener at all).
UNAUTHENTICATED_PREFIX = "/health/"
#: The refusal ``jwt_auth`` recorded, raised by ``auth_gate`` once the limiter has counted it.
AUTH_REFUSAL = web.RequestKey("urr_auth_refusal", ProblemError)
#: Set when the ``access_token`` cookie was refused: the answer clears it.
COOKIE_REFUSED = web.RequestKey("urr_access_cookie_refused", bool)
ACCESS_REQUIRED_CLAIMS = (*BASE_REQUIRED_CLAIMS, "email", "role")
#: Identity claims go into upstream headers: short, printable, no separators.
_MAX_CLAIM_LENGTH = 320
_INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
_LOGIN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="urr"'}


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    """The identity an access token names; ``TokenError`` if a claim is unusable."""
    values = [claims.get("sub"), claims.get("email"), claims.get("role")]
    for value in values:
        if not isinstance(value, str) or not value or len(value) > _MAX_CLAIM_LENGTH:
            raise TokenError(TokenRejection.MISSING_CLAIM, "sub, email and role are required")
        if not value.isprintable():
            raise TokenError(TokenRejection.MALFORMED, "identity claims must be printable")
    user_id, email, role = (str(value) for value in values)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 128:
        jti = None
    return Identity(user_id=user_id, email=email, role=role, jti=jti)


def bearer_token(authorization: str) -> str | None:
    """The token of a ``Bearer`` credential (scheme case-insensitive), else ``None``."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


class _JwtAuth:
    def __init__(
        self,
        verifier: CachedTokenVerifier[Identity],
        rejections: Counter,
        is_revoked: Callable[[str], bool] | None,
    ) -> None:
        self._verifier = verifier
        self._rejections = rejections
        self._is_revoked = is_revoked

    def not_bearer(self) -> Unauthorized:
        self._rejections.labels("jwt_auth", "not_bearer").inc()
        return Unauthorized(
            "the Authorization header must be a Bearer token",
            code="invalid_token",
            headers=_INVALID_TOKEN_CHALLENGE,
        )

    def refused(self, exc: TokenError) -> Unauthorized:
        self._rejections.labels("jwt_auth", str(exc.reason)).inc()
        return Unauthorized(
            f"the access token was refused: {exc.reason}",
            code="invalid_token",
            headers=_INVALID_TOKEN_CHALLENGE,
        )

    def checked(self, identity: Identity) -> Identity:
        revoked = self._is_revoked
        if revoked is not None and identity.jti is not None and revoked(identity.jti):
            self._rejections.labels("jwt_auth", "revoked").inc()
            raise Unauthorized(
                "the access token was refused: revoked",
                code="invalid_token",
                headers=_INVALID_TOKEN_CHALLENGE,
            )
        return identity

    async def authenticate(self, authorization: str) -> Identity:
        token = bearer_token(authorization)
        if token is None:
            raise self.not_bearer()
        try:
            identity = await self._verifier.verify(token)
        except TokenError as exc:
            raise self.refused(exc) from exc
        except KeysUnavailable as unavailable:  # (compiled: a name per clause)
            self._rejections.labels("jwt_auth", "keys_unavailable").inc()
            raise ServiceUnavailable(
                "the access token cannot be checked right now",
                code="auth_keys_unavailable",
                headers={"Retry-After": "5"},
            ) from unavailable
        return self.checked(identity)

    def record_refusal(
        self, request: web.Request, facts: RequestFacts, refusal: ProblemError
    ) -> None:
        """A bad credential: anonymous from here on, and what the auth gate or the answer
        does about it."""
        del facts.headers["Authorization"]
        if not facts.from_cookie:
            facts.auth_refusal = refusal
            request[AUTH_REFUSAL] = refusal
        elif isinstance(refusal, Unauthorized):
            facts.cookie_refused = True
            request[COOKIE_REFUSED] = True
        elif facts.route is not None and facts.route.route.needs_login:
            # Keys unavailable: say so where login counts.
            facts.auth_refusal = refusal
            request[AUTH_REFUSAL] = refusal

    def accept(self, request: web.Request, facts: RequestFacts, identity: Identity) -> None:
        # Upstreams learn the identity only from the proxy's signed ``X-Urr-Identity``.
        facts.identity = identity
        request._state[IDENTITY] = identity  # the dict itself: no ``__setitem__`` call
        bind_request_value("user_id", identity.user_id)

    async def authenticate_then(
        self, request: web.Request, facts: RequestFacts, authorization: str
    ) -> None:
        try:
            identity = await self.authenticate(authorization)
        except ProblemError as refusal:
            self.record_refusal(request, facts, refusal)
            return
        self.accept(request, facts, identity)

    def step(self, request: web.Request, facts: RequestFacts) -> Awaitable[None] | None:
        # Client-sent ``X-User-*`` headers never reach ``facts.headers``: ingress drops them.
        authorization = facts.headers.get(hdrs.AUTHORIZATION)
        if authorization is None or request.path.startswith(UNAUTHENTICATED_PREFIX):
            return None
        token = bearer_token(authorization)
        try:
            if token is None:
                raise self.not_bearer()
            try:
                identity = self._verifier.verify_cached(token, facts.token_digests)
            except TokenError as exc:
                raise self.refused(exc) from exc
            if identity is None:  # not seen yet: verify it (and wait for keys if need be)
                return self.authenticate_then(request, facts, authorization)
            if self._is_revoked is not None:
                identity = self.checked(identity)
        except ProblemError as refusal:
            self.record_refusal(request, facts, refusal)
            return None
        # ``accept`` inlined (once a request).
        facts.identity = identity
        request._state[IDENTITY] = identity
        bind_request_value("user_id", identity.user_id)
        return None

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request[FORWARD_HEADERS]
        strip_identity_headers(headers)
        authorization = headers.get("Authorization")
        if authorization is None or request.path.startswith(UNAUTHENTICATED_PREFIX):
            return await handler(request)
        try:
            identity = await self.authenticate(authorization)
        except ProblemError as refusal:
            del headers["Authorization"]
            match = request.get(ROUTE)
            from_cookie = request.get(FROM_COOKIE, False)
            if not from_cookie:
                request[AUTH_REFUSAL] = refusal
            elif isinstance(refusal, Unauthorized):
                request[COOKIE_REFUSED] = True
            elif match is not None and match.route.needs_login:
                request[AUTH_REFUSAL] = refusal  # keys unavailable: say so where login counts
            identity = None
        if identity is None:
            # (Handled outside the except clause: compiled, a coroutine waiting inside one
            # leaves its exception set as the one being handled for every other callback.)
            return await handler(request)
        # Upstreams learn the identity only from the proxy's signed ``X-Urr-Identity``.
        request[IDENTITY] = identity
        bind_request_context(user_id=identity.user_id)
        return await handler(request)


def jwt_auth_filter(
    verifier: CachedTokenVerifier[Identity],
    rejections: Counter,
    is_revoked: Callable[[str], bool] | None = None,
) -> GatewayFilter:
    """``is_revoked(jti)``: the access tokens revoked by ``jti`` (the rate-limit admin's
    revocations, followed in process with the published configuration, at most one poll
    period stale); such a token is refused like an invalid one."""
    jwt_auth = _JwtAuth(verifier, rejections, is_revoked)
    return GatewayFilter(
        name="jwt_auth",
        order=JWT_AUTH_ORDER,
        middleware=middleware(jwt_auth.middleware),
        step=jwt_auth.step,
    )


def auth_gate_filter(site_origins: Sequence[str]) -> GatewayFilter:
    origins = frozenset(site_origins)

    def gate(
        request: web.Request,
        refusal: ProblemError | None,
        identity: Identity | None,
        from_cookie: bool,
        match: RouteMatch | None,
    ) -> None:
        if refusal is not None:
            raise refusal
        if (
            identity is not None
            and from_cookie
            and request.method.upper() in STATE_CHANGING_METHODS  # else allowed: no lookups
            and not csrf_allowed(
                request.method,
                request.headers.get("Origin"),
                request.headers.get("Sec-Fetch-Site"),
                origins,
            )
        ):
            raise Forbidden(
                "a cookie-authenticated change must come from the site's own pages "
                "(Origin or Sec-Fetch-Site: same-origin)",
                code="csrf_refused",
            )
        if match is not None:
            route = match.route
            if route.needs_login and identity is None:
                raise Unauthorized(
                    "this route needs a logged-in user",
                    code="login_required",
                    headers=_LOGIN_CHALLENGE,
                )
            if route.needs_role is not None and (
                identity is None or identity.role != route.needs_role
            ):
                raise Forbidden(
                    f"this route needs the {route.needs_role} role", code="role_required"
                )

    def auth_gate_step(request: web.Request, facts: RequestFacts) -> None:
        gate(request, facts.auth_refusal, facts.identity, facts.from_cookie, facts.route)

    @middleware
    async def auth_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        gate(
            request,
            request.get(AUTH_REFUSAL),
            request.get(IDENTITY),
            request.get(FROM_COOKIE, False),
            request.get(ROUTE),
        )
        return await handler(request)

    return GatewayFilter(
        name="auth_gate", order=AUTH_GATE_ORDER, middleware=auth_gate, step=auth_gate_step
    )
