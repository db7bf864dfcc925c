"""The filter chain, declared once: the order every request passes through the gateway.

ingress      origin secret, client address (trusted proxies by CIDR), canonical path,
             route, upstream headers (not a filter: it runs first so every filter sees
             the same facts)
-2 cookie_auth   access_token cookie -> Authorization: Bearer
-1 jwt_auth      strip client X-User-*, verify, set identity; a bad token leaves the
                 caller anonymous and records the refusal
 0 rate_limit    sliding window in Redis (injected: built on its own branch); an
                 anonymous caller, forged token or not, is limited per client address
 1 auth_gate     the recorded refusal (401), CSRF for cookie-authenticated changes,
                 login/role per route: refusals come after the limiter, so they are limited
 2 entry_token   Tier-2 entry token on seat and reservation routes
   proxy         the handler (``proxy.UpstreamProxy``); signs the caller's identity into
                 X-Urr-Identity for the one upstream, method and path
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp.typedefs import Middleware

from urr_gateway.filters.base import GatewayFilter
from urr_gateway.ingress import ingress_middleware
from urr_gateway.trust import TrustSettings

#: Name and order of every filter, in the order they run.
FILTER_ORDER: tuple[tuple[str, int], ...] = (
    ("cookie_auth", -2),
    ("jwt_auth", -1),
    ("rate_limit", 0),
    ("auth_gate", 1),
    ("entry_token", 2),
)


class ChainError(ValueError):
    """A filter was given in a slot that is not its own."""


def build_chain(
    *,
    cookie_auth: GatewayFilter,
    jwt_auth: GatewayFilter,
    rate_limit: GatewayFilter | None,
    auth_gate: GatewayFilter,
    entry_token: GatewayFilter,
) -> tuple[GatewayFilter, ...]:
    """The filters in running order; the rate limit is optional until it is merged."""
    given = {
        "cookie_auth": cookie_auth,
        "jwt_auth": jwt_auth,
        "rate_limit": rate_limit,
        "auth_gate": auth_gate,
        "entry_token": entry_token,
    }
    chain = []
    for name, order in FILTER_ORDER:
        gateway_filter = given[name]
        if gateway_filter is None:
            continue
        if gateway_filter.order != order:
            raise ChainError(f"{gateway_filter.name} has order {gateway_filter.order}, not {order}")
        chain.append(gateway_filter)
    return tuple(chain)


def chain_middlewares(
    filters: Sequence[GatewayFilter], *, trust: TrustSettings
) -> list[Middleware]:
    """The aiohttp middlewares: ingress, then the filters by ascending order."""
    ordered = sorted(filters, key=lambda gateway_filter: gateway_filter.order)
    return [
        ingress_middleware(trust),
        *(gateway_filter.middleware for gateway_filter in ordered),
    ]
