"""HTTP handlers: parse with ``credentials``, act through ``Accounts``, render JSON."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from urr_auth.access_tokens import AccessIdentity
from urr_auth.appkeys import ACCESS_TOKENS_KEY, ACCOUNTS_KEY, METRICS_KEY, SETTINGS_KEY
from urr_auth.credentials import LoginRequest, RegisterRequest
from urr_auth.users import EmailTaken, UserStoreUnavailable
from urr_common.logs import bind_request_context
from urr_common.payloads import json_response, read_json
from urr_common.problems import Conflict, ServiceUnavailable, Unauthorized
from urr_common.tokens import TokenError

_NO_STORE = {"Cache-Control": "no-store"}
#: Verifiers refetch on an unknown kid anyway; a short lifetime makes a retired key vanish soon.
JWKS_MAX_AGE_S = 60
_CHALLENGE = 'Bearer realm="urr"'


async def register(request: web.Request) -> web.Response:
    body = await read_json(request, RegisterRequest)
    metrics = request.app[METRICS_KEY]
    try:
        user = await request.app[ACCOUNTS_KEY].register(
            body.email, body.password, body.display_name
        )
    except EmailTaken:
        metrics.registrations.labels("email_taken").inc()
        raise Conflict(
            "an account with this e-mail address already exists", code="email_taken"
        ) from None
    metrics.registrations.labels("created").inc()
    bind_request_context(user_id=str(user.id))
    return json_response(user.to_public(), status=201, headers=_NO_STORE)


async def login(request: web.Request) -> web.Response:
    body = await read_json(request, LoginRequest)
    metrics = request.app[METRICS_KEY]
    user = await request.app[ACCOUNTS_KEY].authenticate(body.email, body.password)
    if user is None:
        metrics.logins.labels("invalid_credentials").inc()
        # One answer for "no such user" and "wrong password": nothing to enumerate.
        raise Unauthorized(
            "the e-mail address or the password is wrong", code="invalid_credentials"
        )
    metrics.logins.labels("success").inc()
    bind_request_context(user_id=str(user.id))
    issued = request.app[ACCESS_TOKENS_KEY].issue(user)
    response = json_response(
        {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in_s,
            "user": user.to_public(),
        },
        headers=_NO_STORE,
    )
    settings = request.app[SETTINGS_KEY]
    response.set_cookie(
        settings.cookie_name,
        issued.token,
        max_age=issued.expires_in_s,
        path="/",
        domain=settings.cookie_domain,
        secure=settings.cookie_secure,
        httponly=True,
        samesite="Lax",
    )
    return response


async def logout(request: web.Request) -> web.Response:
    """Clear the cookie. Tokens are stateless: one already copied stays valid until ``exp``."""
    settings = request.app[SETTINGS_KEY]
    response = web.Response(status=204, headers=_NO_STORE)
    response.del_cookie(
        settings.cookie_name,
        path="/",
        domain=settings.cookie_domain,
        secure=settings.cookie_secure,
        httponly=True,
        samesite="Lax",
    )
    return response


async def me(request: web.Request) -> web.Response:
    identity = _authenticate(request)
    user = await request.app[ACCOUNTS_KEY].store.by_id(identity.user_id)
    if user is None:
        raise Unauthorized(
            "the account this token names no longer exists",
            code="invalid_token",
            reason="unknown_user",
            headers={"WWW-Authenticate": 'Bearer realm="urr", error="invalid_token"'},
        )
    bind_request_context(user_id=str(user.id))
    return json_response(user.to_public(), headers=_NO_STORE)


async def jwks(request: web.Request) -> web.Response:
    return json_response(
        request.app[ACCESS_TOKENS_KEY].jwks(),
        headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE_S}"},
    )


def bearer_token(request: web.Request, cookie_name: str) -> str | None:
    """The token from ``Authorization: Bearer``, else from the cookie; ``None`` when absent.

    A present Authorization header wins over the cookie (the gateway's rule too), and one
    that is not a Bearer credential is an error rather than a reason to look elsewhere.
    """
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Unauthorized(
                "the Authorization header must be 'Bearer <token>'",
                code="invalid_token",
                reason="malformed",
                headers={"WWW-Authenticate": 'Bearer realm="urr", error="invalid_request"'},
            )
        return credentials.strip()
    cookie = request.cookies.get(cookie_name)
    return cookie or None


def _authenticate(request: web.Request) -> AccessIdentity:
    token = bearer_token(request, request.app[SETTINGS_KEY].cookie_name)
    if token is None:
        raise Unauthorized(
            "log in first: send a Bearer token or the access_token cookie",
            code="authentication_required",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    try:
        return request.app[ACCESS_TOKENS_KEY].verify(token)
    except TokenError as exc:
        raise Unauthorized(
            "the access token is not valid",
            code="invalid_token",
            reason=exc.reason.value,
            headers={"WWW-Authenticate": 'Bearer realm="urr", error="invalid_token"'},
        ) from exc


@web.middleware
async def database_unavailable_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """A database outage is the server's problem, but a known one: 503 and retry, not 500."""
    try:
        return await handler(request)
    except UserStoreUnavailable as exc:
        raise ServiceUnavailable(
            "the user database is unavailable; try again shortly",
            code="database_unavailable",
            headers={"Retry-After": "1"},
        ) from exc
