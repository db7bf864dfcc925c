"""The first gateway step, before any filter: client address, canonical path, route.

When origin secrets are configured, a request without one is refused here (403
``origin_unverified``; health checks excepted: load balancers and kubelets call them directly).
Everything a filter or the proxy decides on is computed here once: ``CLIENT_IP`` (from
``X-Forwarded-For`` only when the TCP peer is a trusted proxy, see ``trust``), the canonical
path (``paths.normalise_path``; when it differs from what the
client sent, the request is re-issued with the canonical path so every later filter sees
exactly what the upstream will get), the route, and the upstream request headers (client
headers minus hop-by-hop, identity and forwarding ones, plus X-Forwarded-* and X-Request-Id)
which the filters then edit.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict, istr
from yarl import URL

from urr_common.problems import BadRequest, Forbidden
from urr_common.service import REQUEST_ID_HEADER, request_id_of
from urr_gateway.context import CLIENT_IP, FACTS, RequestFacts
from urr_gateway.forwarding import (
    API_KEY_HEADER,
    NOT_FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    forwardable_headers,
    forwarded_host,
    forwarded_proto,
)
from urr_gateway.middleware import middleware
from urr_gateway.paths import InvalidPath, NormalisedPath, normalise_path
from urr_gateway.routing import ROUTE, RouteMatch, match_route
from urr_gateway.trust import ProxyTrust, TrustSettings, origin_secret_matches

#: ``REQUEST_ID_HEADER`` as an ``istr`` (see ``forwarding``).
_REQUEST_ID = istr(REQUEST_ID_HEADER)
#: Paths a load balancer or kubelet calls directly, without the CDN's origin secret.
_DIRECT_PREFIX = "/health/"

#: The canonical path of the request (what routes match and the upstream receives).
NORMALISED_PATH = web.RequestKey("urr_normalised_path", NormalisedPath)
#: The query string exactly as the client sent it (forwarded verbatim).
RAW_QUERY = web.RequestKey("urr_raw_query", str)
#: Headers the upstream will receive; filters add and remove entries here.
FORWARD_HEADERS = web.RequestKey("urr_forward_headers", CIMultiDict[str])


#: Raw paths (without query) already normalised and matched, per ``Ingress``: one lookup
#: instead of two cached calls. Bounded in entries and path length (oldest entry goes
#: first); refused paths are never kept.
_ROUTED_MAX_ENTRIES = 4096
_ROUTED_MAX_PATH = 256


class Ingress:
    """The ingress step as a plain call: ``(request, facts)``, the request re-issued with the
    canonical path when the client's differed (else the same object)."""

    def __init__(self, trust: TrustSettings) -> None:
        self._proxies = ProxyTrust(trust.proxy_cidrs)
        self._known_direct = self._proxies.known_direct
        self._secrets = tuple(trust.origin_secrets)
        self._secret_header = istr(trust.origin_secret_header)
        # Never forwarded: the origin secret (a credential for us, not for the upstream),
        # and ``X-API-Key`` except on the routes whose own credential it is.
        secret = trust.origin_secret_header.lower()
        self._not_forwarded = NOT_FORWARDED | {secret, API_KEY_HEADER.lower()}
        self._not_forwarded_but_key = NOT_FORWARDED | {secret}
        self._routed: dict[str, tuple[NormalisedPath, RouteMatch | None]] = {}

    def _route(self, raw_path: str) -> tuple[NormalisedPath, RouteMatch | None]:
        """``(normalise_path(raw_path), match_route(...))``, kept per raw path."""
        routed = self._routed.get(raw_path)
        if routed is None:
            try:
                normalised = normalise_path(raw_path)
            except InvalidPath as exc:
                raise BadRequest(str(exc), code="invalid_path") from exc
            routed = (normalised, match_route(normalised.segments))
            if len(raw_path) <= _ROUTED_MAX_PATH:
                if len(self._routed) >= _ROUTED_MAX_ENTRIES:
                    del self._routed[next(iter(self._routed))]
                self._routed[raw_path] = routed
        return routed

    def __call__(self, request: web.Request, request_id: str) -> tuple[web.Request, RequestFacts]:
        raw_path, _, raw_query = request.raw_path.partition("?")
        normalised, match = self._route(raw_path)
        client_headers = request.headers
        # On the canonical path: "/health/../api/..." is an API request, not a health check.
        if (
            self._secrets
            and not normalised.raw.startswith(_DIRECT_PREFIX)
            and not origin_secret_matches(client_headers.get(self._secret_header), self._secrets)
        ):
            raise Forbidden("requests must come through the site's CDN", code="origin_unverified")
        remote = request.remote
        client = self._known_direct(remote)
        if client is None:
            client = self._proxies.client(remote, client_headers.getall(X_FORWARDED_FOR, ()))
        headers = forwardable_headers(
            client_headers,
            self._not_forwarded_but_key
            if match is not None and match.route.forwards_api_key
            else self._not_forwarded,
        )
        if client.via_trusted_proxy:
            proto = forwarded_proto(request.scheme, client_headers, 1)
            host = forwarded_host(request.host, client_headers, 1)
        else:
            proto, host = request.scheme, request.host
        # Every name here is gateway-owned, so none is left in the copy: added in one call.
        headers.extend(
            (
                (X_FORWARDED_FOR, ", ".join(client.chain)),
                (X_FORWARDED_PROTO, proto),
                (X_FORWARDED_HOST, host),
                (_REQUEST_ID, request_id),
            )
        )
        facts = RequestFacts(request_id, client.ip, normalised, raw_query, match, headers)
        # Set before a re-issue: the clone copies the state, so both requests share the facts
        # (the answer aiohttp prepares for the original request sees what the filters learnt).
        state = request._state
        state[FACTS] = facts
        if normalised.raw != raw_path:
            canonical = URL.build(path=normalised.raw, query_string=raw_query, encoded=True)
            request = request.clone(rel_url=canonical)
            state = request._state
        state[CLIENT_IP] = client.ip
        state[NORMALISED_PATH] = normalised
        state[RAW_QUERY] = raw_query
        if match is not None:
            state[ROUTE] = match
        state[FORWARD_HEADERS] = headers
        return request, facts


def ingress_middleware(trust: TrustSettings) -> Middleware:
    """The ingress step as an aiohttp middleware (for applications that assemble their own
    middlewares; the gateway runs ``Ingress`` inside its one pipeline)."""
    ingress_step = Ingress(trust)

    @middleware
    async def ingress(request: web.Request, handler: Handler) -> web.StreamResponse:
        request, _ = ingress_step(request, request_id_of(request))
        return await handler(request)

    return ingress
