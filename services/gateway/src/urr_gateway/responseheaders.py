"""Headers the gateway adds to every answer it gives: its own, problems, and proxied ones.

Installed as an ``on_response_prepare`` signal, so streamed (proxied) answers get them too:

- security headers (seed 004 §5.5): ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Referrer-Policy``, and ``Strict-Transport-Security`` when the
  request came over TLS (to us, or to the trusted proxy in front of us). An upstream's own
  value is kept.
- the expiring ``access_token`` cookie when the JWT filter refused the cookie
  (``COOKIE_REFUSED``), unless the answer sets that cookie itself (a login).
"""

from __future__ import annotations

from http.cookies import SimpleCookie

from aiohttp import web
from multidict import istr

from urr_gateway.context import FACTS
from urr_gateway.filters.cookie_auth import ACCESS_TOKEN_COOKIE
from urr_gateway.filters.jwt_auth import COOKIE_REFUSED
from urr_gateway.filters.ratelimit import RATE_LIMIT_HEADERS_INSTALLED, decision_headers
from urr_gateway.forwarding import X_FORWARDED_PROTO
from urr_gateway.ingress import FORWARD_HEADERS
from urr_gateway.prepare import add_sync_receiver
from urr_gateway.trust import TrustSettings

REFERRER_POLICY = "strict-origin-when-cross-origin"


def security_headers(over_tls: bool, hsts_max_age_s: int) -> dict[str, str]:
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": REFERRER_POLICY,
    }
    if over_tls and hsts_max_age_s:
        headers["Strict-Transport-Security"] = f"max-age={hsts_max_age_s}; includeSubDomains"
    return headers


def clearing_cookie(domain: str | None, secure: bool) -> str:
    """A ``Set-Cookie`` value that deletes the ``access_token`` cookie the auth service set."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[ACCESS_TOKEN_COOKIE] = ""
    morsel = cookie[ACCESS_TOKEN_COOKIE]
    morsel["path"] = "/"
    morsel["max-age"] = 0
    morsel["expires"] = "Thu, 01 Jan 1970 00:00:00 GMT"
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if domain:
        morsel["domain"] = domain
    if secure:
        morsel["secure"] = True
    return morsel.OutputString()


def _sets_access_cookie(response: web.StreamResponse) -> bool:
    prefix = f"{ACCESS_TOKEN_COOKIE}="
    return any(value.startswith(prefix) for value in response.headers.getall("Set-Cookie", ()))


def install_response_headers(app: web.Application, trust: TrustSettings) -> None:
    """One ``on_response_prepare`` receiver for every header the gateway adds to an answer:
    the security headers, the expiring cookie, and the rate-limit decision's headers (so
    ``filters.ratelimit.install_rate_limit_headers`` adds no second receiver)."""
    hsts = trust.hsts_max_age_s
    # Names as ``istr``s (see ``forwarding``): set on every answer.
    plain = {istr(name): value for name, value in security_headers(False, hsts).items()}
    over_tls_headers = {istr(name): value for name, value in security_headers(True, hsts).items()}

    def apply(request: web.Request, response: web.StreamResponse) -> None:
        state = request._state  # ``facts_of``/``peek`` inlined: once per answer
        facts = state.get(FACTS)
        limited: dict[str, str] | None
        if facts is not None:
            scheme = facts.headers.get(X_FORWARDED_PROTO, request.scheme)
            cookie_refused = facts.cookie_refused or state.get(COOKIE_REFUSED) is True
            limited = facts.rate_limit_headers
            if limited is None:
                limited = decision_headers(request)
            elif facts.rate_limit_set:
                limited = None  # on the answer already: a ``merge`` would find every name
        else:
            forwarded = request.get(FORWARD_HEADERS)
            scheme = (
                forwarded.get(X_FORWARDED_PROTO, request.scheme) if forwarded else request.scheme
            )
            cookie_refused = bool(request.get(COOKIE_REFUSED))
            limited = decision_headers(request)
        over_tls = scheme == "https"
        headers = response.headers
        # ``merge``: each name added only when absent (an upstream's own value is kept), in
        # one call instead of a ``setdefault`` per name.
        headers.merge(over_tls_headers if over_tls else plain)
        if limited is not None:
            headers.merge(limited)
        if cookie_refused and not _sets_access_cookie(response):
            headers.add("Set-Cookie", clearing_cookie(trust.access_cookie_domain, over_tls))

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        apply(request, response)

    app.on_response_prepare.append(add)
    add_sync_receiver(app, add, apply)
    app[RATE_LIMIT_HEADERS_INSTALLED] = True
