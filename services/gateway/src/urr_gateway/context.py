"""What the filters learn about a request and hand to the filters after them.

Set once, read many times: the client address by the proxy-aware address logic, the identity
by the JWT filter. The rate-limit and entry-token filters read them; nothing reads client
headers for these again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import hdrs, web

from urr_gateway.trust import address_bucket

if TYPE_CHECKING:
    from multidict import CIMultiDict

    from urr_common.problems import ProblemError
    from urr_gateway.paths import NormalisedPath
    from urr_gateway.ratelimit.window import Decision
    from urr_gateway.routing import RouteMatch
    from urr_gateway.tokencache import TokenDigests


@dataclass(frozen=True)
class Identity:
    """A verified caller, from a verified access token."""

    user_id: str
    email: str
    role: str
    #: The access token's ``jti`` when it has one (revocation by ``jti`` reads it).
    jti: str | None = None


T = TypeVar("T")

#: The client's address, trusted-proxy aware (never a raw X-Forwarded-For).
CLIENT_IP = web.RequestKey("urr_client_ip", str)
#: Set by the JWT filter when a valid access token came with the request; absent otherwise.
IDENTITY = web.RequestKey("urr_identity", Identity)


class RequestFacts:
    """Everything the gateway learns about one request, in one object built by ingress.

    The filters of the gateway's own pipeline (``chain.GatewayPipeline``) read and write these
    attributes instead of looking keys up on the request (``request.get`` of an absent key
    raises and catches a ``KeyError`` inside ``Mapping.get``). The public request keys
    (``CLIENT_IP``, ``IDENTITY``, ``ROUTE``, ...) are still set for whatever reads them.
    """

    __slots__ = (
        "auth_refusal",
        "client_ip",
        "cookie_refused",
        "entry_token",
        "from_cookie",
        "headers",
        "identity",
        "normalised",
        "rate_limit_decision",
        "rate_limit_headers",
        "rate_limit_revoked_key",
        "rate_limit_set",
        "raw_query",
        "request_id",
        "revocation_key",
        "route",
        "token_digests",
    )

    def __init__(
        self,
        request_id: str,
        client_ip: str,
        normalised: NormalisedPath,
        raw_query: str,
        route: RouteMatch | None,
        headers: CIMultiDict[str],
    ) -> None:
        self.request_id = request_id
        self.client_ip = client_ip
        self.normalised = normalised
        self.raw_query = raw_query
        self.route = route
        #: The headers the upstream will receive (``ingress.FORWARD_HEADERS``).
        self.headers = headers
        self.identity: Identity | None = None
        #: The ``Authorization`` header was made from the ``access_token`` cookie.
        self.from_cookie = False
        #: The refusal ``jwt_auth`` recorded for ``auth_gate`` to raise.
        self.auth_refusal: ProblemError | None = None
        #: The ``access_token`` cookie was refused: the answer clears it.
        self.cookie_refused = False
        #: ``revocation.revocation_key_of``'s answer, once asked ("" for none).
        self.revocation_key: str | None = None
        #: The rate-limit decision's headers, once decided (every answer carries them).
        self.rate_limit_headers: dict[str, str] | None = None
        #: ``rate_limit_headers`` are on the answer being prepared already (the protocol
        #: server's ``_head``, while it runs the ``on_response_prepare`` receivers).
        self.rate_limit_set = False
        #: The rate-limit decision (``filters.ratelimit.RATE_LIMIT_DECISION``).
        self.rate_limit_decision: Decision | None = None
        #: The revoked-jti key the decision looked up (``RATE_LIMIT_REVOKED_KEY``).
        self.rate_limit_revoked_key: str | None = None
        #: The client connection's token digests (the protocol server's; else ``None``).
        self.token_digests: TokenDigests | None = None
        #: ``revocation.entry_token_of``'s answer, once asked ("" for none): the limiter's
        #: revocation key and the entry-token filter both read it.
        self.entry_token: str | None = None

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        fields: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        return f"RequestFacts({fields})"


#: The request's facts, when the request went through the gateway's ingress.
FACTS = web.RequestKey("urr_request_facts", RequestFacts)


def peek(request: web.Request, key: web.RequestKey[T]) -> T | None:
    """``request.get(key)`` without the cost of a miss (``Mapping.get`` raises and catches a
    ``KeyError`` for an absent key; aiohttp keeps the values in a plain dict)."""
    return request._state.get(key)


#: Parsed ``Cookie`` headers by their exact text: a browser sends the same header on every
#: request, and parsing it (``http.cookies`` morsels) costs more than the rest of the cookie
#: filter. Bounded in entries and in the header length it keeps (oldest entry goes first).
_COOKIES: dict[str, Mapping[str, str]] = {}
_COOKIES_MAX_ENTRIES = 1024
_COOKIES_MAX_HEADER = 4096
_NO_COOKIES: Mapping[str, str] = MappingProxyType({})


def request_cookies(request: web.Request) -> Mapping[str, str]:
    """``request.cookies``, parsed once per distinct ``Cookie`` header (aiohttp's parser)."""
    raw = request.headers.get(hdrs.COOKIE)
    if not raw:
        return _NO_COOKIES
    cookies = _COOKIES.get(raw)
    if cookies is None:
        cookies = request.cookies  # a read-only view: safe to share between requests
        if len(raw) <= _COOKIES_MAX_HEADER:
            if len(_COOKIES) >= _COOKIES_MAX_ENTRIES:
                del _COOKIES[next(iter(_COOKIES))]
            _COOKIES[raw] = cookies
    return cookies


def facts_of(request: web.Request) -> RequestFacts | None:
    """The request's ``RequestFacts`` (``None`` outside the gateway's ingress, e.g. in tests
    that assemble their own middlewares)."""
    return request._state.get(FACTS)


def rate_limit_subject(request: web.Request) -> str:
    """Per user when logged in, else per client address (an IPv6 client's /64); hash-tagged
    for Redis Cluster."""
    identity = request.get(IDENTITY)
    if identity is not None:
        return f"u:{identity.user_id}"
    return f"ip:{address_bucket(request.get(CLIENT_IP, request.remote or 'unknown'))}"


def subject_of(identity: Identity | None, client_ip: str) -> str:
    """``rate_limit_subject`` from facts already at hand."""
    if identity is not None:
        return f"u:{identity.user_id}"
    return f"ip:{address_bucket(client_ip)}"
