"""Cookie auth (order -2): a browser's ``access_token`` cookie becomes a Bearer token.

Only when the request carries no ``Authorization`` header: an explicit header always wins.
The JWT filter after this one verifies whatever ends up there; ``FROM_COOKIE`` tells it (and
the CSRF rule) that the credential came from the cookie, which a browser sends on its own.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from urr_gateway.context import RequestFacts, request_cookies
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.ingress import FORWARD_HEADERS
from urr_gateway.middleware import middleware

ACCESS_TOKEN_COOKIE = "access_token"  # noqa: S105 (a cookie name)
COOKIE_AUTH_ORDER = -2
#: Set when the ``Authorization`` header the filters see was made from the cookie.
FROM_COOKIE = web.RequestKey("urr_auth_from_cookie", bool)


def bearer_from_cookie(authorization: str | None, cookie: str | None) -> str | None:
    """The ``Authorization`` value to add, or ``None`` to leave the request as it is."""
    if authorization is not None or not cookie:
        return None
    return f"Bearer {cookie}"


def cookie_auth_step(request: web.Request, facts: RequestFacts) -> None:
    headers = facts.headers
    if hdrs.AUTHORIZATION in headers:
        return None
    cookie = request_cookies(request).get(ACCESS_TOKEN_COOKIE)
    if cookie:
        headers[hdrs.AUTHORIZATION] = f"Bearer {cookie}"
        facts.from_cookie = True
        request._state[FROM_COOKIE] = True  # the dict itself: no ``__setitem__`` call
    return None


@middleware
async def cookie_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    headers = request[FORWARD_HEADERS]
    if "Authorization" not in headers and ACCESS_TOKEN_COOKIE in request.cookies:
        value = bearer_from_cookie(None, request.cookies[ACCESS_TOKEN_COOKIE])
        if value is not None:
            headers["Authorization"] = value
            request[FROM_COOKIE] = True
    return await handler(request)


def cookie_auth_filter() -> GatewayFilter:
    return GatewayFilter(
        name="cookie_auth", order=COOKIE_AUTH_ORDER, middleware=cookie_auth, step=cookie_auth_step
    )
