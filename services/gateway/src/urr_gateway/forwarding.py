"""Header rules of the proxy: hop-by-hop removal, the client address, X-Forwarded-*.

Pure functions over header maps, so every rule has a unit test without a server.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy, istr

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
#: pre-RFC ``Keep-Alive`` and ``Proxy-Connection``; never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers the gateway sets itself or that would let a client speak for the gateway:
#: identity (the gateway's own signed assertion), forwarding (set from the connection), the
#: upstream's own ``Host``, and ``Expect`` (the gateway answers 100-continue itself).
_GATEWAY_OWNED = frozenset(
    {
        "host",
        "expect",
        "forwarded",
        "x-real-ip",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-request-id",
        # The signed identity assertion: only the gateway mints it (``urr_common.identity``).
        "x-urr-identity",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | _GATEWAY_OWNED
#: Every request header name never forwarded as the client sent it (lower case).
NOT_FORWARDED = _NOT_FORWARDED
_NO_TOKENS: frozenset[str] = frozenset()
IDENTITY_HEADER_PREFIX = "x-user-"
# ``istr``: a case-insensitive multidict takes an ``istr`` key's folded form as it is, a
# plain string's it folds again on every lookup (the header names the gateway looks up or
# sets on every request are ``istr``s for that reason; ``aiohttp.hdrs`` has the standard ones).
X_FORWARDED_FOR = istr("X-Forwarded-For")
#: A tenant's credential: it selects the tenant's rate limits in the gateway.
API_KEY_HEADER = istr("X-API-Key")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")


def connection_tokens(
    headers: Mapping[str, str] | CIMultiDict[str] | CIMultiDictProxy[str],
) -> frozenset[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop for this message)."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        if hdrs.CONNECTION not in headers:
            return _NO_TOKENS  # the common case, on every request and every answer
        values: Iterable[str] = headers.getall(hdrs.CONNECTION, ())
    else:
        value = headers.get("Connection")
        values = (value,) if value else ()
    return frozenset(
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    )


#: ``base | connection_tokens(...)`` by (base, the ``Connection`` values as sent): nginx
#: answers ``Connection: keep-alive`` every time, and parsing it into a set and uniting that
#: with the hop-by-hop names cost more than the rest of the header copy. Bounded (emptied
#: when full): a client picks its own ``Connection`` value.
_DROPPED: dict[tuple[frozenset[str], tuple[str, ...]], frozenset[str]] = {}
_DROPPED_MAX_ENTRIES = 256


def _dropped(
    base: frozenset[str], headers: CIMultiDict[str] | CIMultiDictProxy[str]
) -> frozenset[str]:
    """``base`` plus the names the message's ``Connection`` header lists."""
    if hdrs.CONNECTION not in headers:
        return base
    key = (base, tuple(headers.getall(hdrs.CONNECTION)))
    dropped = _DROPPED.get(key)
    if dropped is None:
        if len(_DROPPED) >= _DROPPED_MAX_ENTRIES:
            _DROPPED.clear()
        dropped = _DROPPED[key] = base | connection_tokens(headers)
    return dropped


#: The names to remove from a copy of a message's headers, by (the names never forwarded,
#: the message's header names in order as sent, whether ``X-User-*`` names go too): a client
#: sends the same names on every request, so the copy is made in C and only the few names
#: found here are removed, instead of a Python pass lowering every name. Exact keys (case as
#: sent), so a name is never mistaken for another; bounded in entries (emptied when full)
#: and in the names' total length it keeps (a client chooses its names: a miss costs the
#: pass, never memory).
_DROP_NAMES: dict[tuple[frozenset[str], tuple[str, ...], bool], tuple[str, ...]] = {}
_DROP_NAMES_MAX_ENTRIES = 1024
_DROP_NAMES_MAX_LENGTH = 2048


def _names_to_drop(
    dropped: frozenset[str], names: tuple[str, ...], identity_too: bool
) -> tuple[str, ...]:
    """The distinct names in ``names`` that are in ``dropped`` (case-insensitively), and
    with ``identity_too`` the ``X-User-*`` ones; cached."""
    key = (dropped, names, identity_too)
    found = _DROP_NAMES.get(key)
    if found is None:
        found = tuple(
            name
            for name in dict.fromkeys(names)
            if name.lower() in dropped
            or (identity_too and name.lower().startswith(IDENTITY_HEADER_PREFIX))
        )
        if sum(map(len, names)) <= _DROP_NAMES_MAX_LENGTH:
            if len(_DROP_NAMES) >= _DROP_NAMES_MAX_ENTRIES:
                _DROP_NAMES.clear()
            _DROP_NAMES[key] = found
    return found


def forwardable_headers(
    headers: CIMultiDictProxy[str], never_forwarded: frozenset[str] = _NOT_FORWARDED
) -> CIMultiDict[str]:
    """``upstream_request_headers`` with more names never forwarded (``never_forwarded``: a
    superset of the hop-by-hop and gateway-owned names, in lower case; ingress adds the
    origin secret's header and, on most routes, ``X-API-Key``). A new multidict."""
    # ``_dropped`` and ``_names_to_drop``'s cache hit inlined: two calls less a request.
    dropped = (
        never_forwarded if hdrs.CONNECTION not in headers else _dropped(never_forwarded, headers)
    )
    names = tuple(headers.keys())
    found = _DROP_NAMES.get((dropped, names, True))
    if found is None:
        found = _names_to_drop(dropped, names, True)
    forwarded = CIMultiDict(headers)
    for name in found:
        forwarded.popall(name, None)  # a name sent in two spellings is found twice
    return forwarded


def upstream_request_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop, gateway-owned and ``X-User-*`` ones."""
    return forwardable_headers(headers)


def downstream_response_headers(
    headers: CIMultiDict[str] | CIMultiDictProxy[str],
) -> CIMultiDict[str]:
    """The upstream's answer headers minus hop-by-hop ones (``Set-Cookie`` repeats kept)."""
    # A copy (in C) less the few dropped names: cheaper than rebuilding from kept pairs.
    return strip_hop_by_hop(headers.copy())


def strip_hop_by_hop(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """``downstream_response_headers`` in place (and returned): for an answer read whole,
    whose headers nothing reads afterwards, the copy is saved."""
    # ``_dropped``'s cache hit inlined (upstreams send ``Connection`` on every answer).
    if hdrs.CONNECTION in headers:
        dropped = _DROPPED.get((HOP_BY_HOP, tuple(headers.getall(hdrs.CONNECTION))))
        if dropped is None:
            dropped = _dropped(HOP_BY_HOP, headers)
    else:
        dropped = HOP_BY_HOP
    names = tuple(headers.keys())
    found = _DROP_NAMES.get((dropped, names, False))
    if found is None:
        found = _names_to_drop(dropped, names, False)
    for name in found:
        headers.popall(name, None)
    return headers


def strip_identity_headers(headers: CIMultiDict[str]) -> None:
    """Remove every ``X-User-*`` header in place (only the JWT filter sets them)."""
    for name in [name for name in headers if name.lower().startswith(IDENTITY_HEADER_PREFIX)]:
        headers.popall(name, None)


def _forwarded_for_values(headers: CIMultiDictProxy[str]) -> list[str]:
    return [
        part.strip()
        for value in headers.getall(X_FORWARDED_FOR, ())
        for part in value.split(",")
        if part.strip()
    ]


@functools.lru_cache(maxsize=4096)
def _canonical_ip(value: str) -> str | None:
    # Cached: parsing an address costs more than the rest of the header work, and the same
    # peers (load balancers, keep-alive clients) come back on every request.
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return None


def client_address(
    remote: str | None, headers: CIMultiDictProxy[str], trusted_proxy_count: int
) -> tuple[str, list[str]]:
    """``(client address, X-Forwarded-For chain to send upstream)``.

    With N trusted proxies the N-th entry from the right of X-Forwarded-For was written by
    the outermost trusted proxy and is the client; entries to its left are whatever the
    client claimed and are dropped. With fewer entries than N, or an entry that is not an IP
    address, nothing in the header is trusted and the TCP peer is the client.
    """
    peer = _canonical_ip(remote or "") or "unknown"
    if trusted_proxy_count == 0:
        return peer, [peer]
    values = _forwarded_for_values(headers)
    if len(values) < trusted_proxy_count:
        return peer, [peer]
    trusted = values[-trusted_proxy_count:]
    canonical = [_canonical_ip(value) for value in trusted]
    if any(value is None for value in canonical):
        return peer, [peer]
    chain = [value for value in canonical if value is not None]
    return chain[0], [*chain, peer]


def forwarded_proto(scheme: str, headers: CIMultiDictProxy[str], trusted_proxy_count: int) -> str:
    """The scheme the client used: a trusted proxy's ``X-Forwarded-Proto``, else ours."""
    if trusted_proxy_count:
        claimed = headers.get(X_FORWARDED_PROTO, "").split(",")[0].strip().lower()
        if claimed in ("http", "https"):
            return claimed
    return scheme


def forwarded_host(host: str, headers: CIMultiDictProxy[str], trusted_proxy_count: int) -> str:
    """The host the client asked for: a trusted proxy's ``X-Forwarded-Host``, else ``Host``."""
    if trusted_proxy_count:
        claimed = headers.get(X_FORWARDED_HOST, "").split(",")[0].strip()
        if claimed:
            return claimed
    return host
