"""What the filters learn about a request and hand to the filters after them.

Set once, read many times: the client address by the proxy-aware address logic, the identity
by the JWT filter. The rate-limit and entry-token filters read them; nothing reads client
headers for these again.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from urr_gateway.trust import address_bucket


@dataclass(frozen=True)
class Identity:
    """A verified caller, from a verified access token."""

    user_id: str
    email: str
    role: str
    #: The access token's ``jti`` when it has one (revocation by ``jti`` reads it).
    jti: str | None = None


#: The client's address, trusted-proxy aware (never a raw X-Forwarded-For).
CLIENT_IP = web.RequestKey("urr_client_ip", str)
#: Set by the JWT filter when a valid access token came with the request; absent otherwise.
IDENTITY = web.RequestKey("urr_identity", Identity)


def rate_limit_subject(request: web.Request) -> str:
    """Per user when logged in, else per client address (an IPv6 client's /64); hash-tagged
    for Redis Cluster."""
    identity = request.get(IDENTITY)
    if identity is not None:
        return f"u:{identity.user_id}"
    return f"ip:{address_bucket(request.get(CLIENT_IP, request.remote or 'unknown'))}"
