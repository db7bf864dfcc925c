"""JWT auth (order -1): verify the Bearer token, publish the identity, enforce the route.

Client-sent ``X-User-*`` headers are removed on every request, with or without a token, so
an upstream can trust them. A token that is present must be valid (401 ``invalid_token``
otherwise, even on routes that need no login); a route that needs login refuses a request
without one (401 ``login_required``); a route that needs a role refuses other roles (403).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter

from urr_common.logs import bind_request_context
from urr_common.problems import Forbidden, ServiceUnavailable, Unauthorized
from urr_common.tokens import BASE_REQUIRED_CLAIMS, TokenError, TokenRejection
from urr_gateway.context import IDENTITY, Identity
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.forwarding import strip_identity_headers
from urr_gateway.ingress import FORWARD_HEADERS
from urr_gateway.jwks import KeysUnavailable
from urr_gateway.routing import ROUTE
from urr_gateway.verification import CachedTokenVerifier

JWT_AUTH_ORDER = -1
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
    return Identity(user_id=user_id, email=email, role=role)


def bearer_token(authorization: str) -> str | None:
    """The token of a ``Bearer`` credential (scheme case-insensitive), else ``None``."""
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def jwt_auth_filter(verifier: CachedTokenVerifier[Identity], rejections: Counter) -> GatewayFilter:
    async def authenticate(authorization: str) -> Identity:
        token = bearer_token(authorization)
        if token is None:
            rejections.labels("jwt_auth", "not_bearer").inc()
            raise Unauthorized(
                "the Authorization header must be a Bearer token",
                code="invalid_token",
                headers=_INVALID_TOKEN_CHALLENGE,
            )
        try:
            return await verifier.verify(token)
        except TokenError as exc:
            rejections.labels("jwt_auth", str(exc.reason)).inc()
            raise Unauthorized(
                f"the access token was refused: {exc.reason}",
                code="invalid_token",
                headers=_INVALID_TOKEN_CHALLENGE,
            ) from exc
        except KeysUnavailable as exc:
            rejections.labels("jwt_auth", "keys_unavailable").inc()
            raise ServiceUnavailable(
                "the access token cannot be checked right now",
                code="auth_keys_unavailable",
                headers={"Retry-After": "5"},
            ) from exc

    @web.middleware
    async def jwt_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request[FORWARD_HEADERS]
        strip_identity_headers(headers)
        identity: Identity | None = None
        authorization = headers.get("Authorization")
        if authorization is not None:
            identity = await authenticate(authorization)
            request[IDENTITY] = identity
            headers["X-User-Id"] = identity.user_id
            headers["X-User-Email"] = identity.email
            headers["X-User-Role"] = identity.role
            bind_request_context(user_id=identity.user_id)
        match = request.get(ROUTE)
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
        return await handler(request)

    return GatewayFilter(name="jwt_auth", order=JWT_AUTH_ORDER, middleware=jwt_auth)
