"""Is an entry token revoked? The queue service revokes a ``jti`` when its holder leaves.

``RevocationCheck`` is the seam. ``RedisRevocationCheck`` asks Redis on its own (one
``EXISTS``). Once the rate limiter checks the same key in its own round trip (key from
``revocation_key_of``), ``PrecheckedRevocation`` takes its answer instead of a second round
trip: stored as ``ENTRY_TOKEN_REVOCATION``, or read by any ``VerdictReader`` given to
``create_app(revocation_verdict=...)``.

A lookup that fails or exceeds its budget lets the token through (fail open, logged once per
outage and counted): the limiter keeps serving while Redis is down, and refusing every booking
in an outage would hurt more than a token its holder gave up on.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import orjson
from aiohttp import web
from multidict import istr
from prometheus_client import Counter

from urr_common.logs import get_logger
from urr_common.resp import RedirectedError
from urr_common.tokens import MAX_TOKEN_BYTES
from urr_gateway.context import FACTS, IDENTITY, RequestFacts, request_cookies
from urr_gateway.keys import revoked_entry_token_key
from urr_gateway.routing import ROUTE

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

_LOG = get_logger(__name__)

ENTRY_TOKEN_HEADER = istr("x-queue-entry-token")  # an ``istr``: see ``forwarding``
ENTRY_TOKEN_COOKIE = "urr-entry-token"  # noqa: S105 (a cookie name)


@dataclass(frozen=True, slots=True)
class RevocationVerdict:
    """What an earlier step found for ``key``."""

    key: str
    revoked: bool


#: Set by the rate-limit filter when it checked the revocation key in its own round trip.
ENTRY_TOKEN_REVOCATION = web.RequestKey("urr_entry_token_revocation", RevocationVerdict)


def entry_token_of(request: web.Request) -> str | None:
    """The entry token from the header, else from the cookie."""
    token = request.headers.get(ENTRY_TOKEN_HEADER)
    if token:
        return token.strip()
    return request_cookies(request).get(ENTRY_TOKEN_COOKIE) or None


def facts_entry_token(request: web.Request, facts: RequestFacts) -> str | None:
    """``entry_token_of(request)``, looked up once per request (kept on ``facts``)."""
    token = facts.entry_token
    if token is None:
        token = facts.entry_token = entry_token_of(request) or ""
    return token or None


def revocation_key_of(request: web.Request) -> str | None:
    """The revocation key for the request's entry token, read without verifying it.

    For the rate-limit filter (which runs before the entry-token filter) to include in its
    round trip. The entry-token filter verifies the token afterwards and only trusts a
    verdict for exactly the key of the verified ``sub`` and ``jti``. Computed once per
    request (the limiter and the verdict reader both ask).
    """
    facts = request._state.get(FACTS)  # ``facts_of`` inlined: once or twice a request
    if facts is not None:
        if facts.revocation_key is None:
            facts.revocation_key = _facts_revocation_key(request, facts) or ""
        return facts.revocation_key or None
    cached = request.get(_REVOCATION_KEY)
    if cached is not None:
        return cached or None
    key = _revocation_key(request)
    request[_REVOCATION_KEY] = key or ""
    return key


def _facts_revocation_key(request: web.Request, facts: RequestFacts) -> str | None:
    match = facts.route
    if match is None or not match.route.needs_entry_token:
        return None
    identity = facts.identity if facts.identity is not None else request.get(IDENTITY)
    if identity is None:
        return None
    token = facts.entry_token
    if token is None:  # ``facts_entry_token`` inlined
        token = facts.entry_token = entry_token_of(request) or ""
    if not token:
        return None
    jti = _cached_jti(token)
    return revoked_entry_token_key(identity.user_id, jti) if jti else None


#: ``unverified_jti`` by token text: the same entry token comes with every request of its
#: holder, and decoding it (base64, JSON) costs more than the rest of the lookup. Bounded in
#: entries and in the token length it keeps (oldest entry goes first).
_JTIS: dict[str, str | None] = {}
_JTIS_MAX_ENTRIES = 4096
_JTIS_MAX_TOKEN = 2048


def _cached_jti(token: str) -> str | None:
    try:
        return _JTIS[token]
    except KeyError:
        pass
    jti = unverified_jti(token)
    if len(token) <= _JTIS_MAX_TOKEN:
        if len(_JTIS) >= _JTIS_MAX_ENTRIES:
            del _JTIS[next(iter(_JTIS))]
        _JTIS[token] = jti
    return jti


def _revocation_key(request: web.Request) -> str | None:
    match = request.get(ROUTE)
    if match is None or not match.route.needs_entry_token:
        return None
    identity = request.get(IDENTITY)
    token = entry_token_of(request)
    if identity is None or not token:
        return None
    jti = unverified_jti(token)
    return revoked_entry_token_key(identity.user_id, jti) if jti else None


def unverified_jti(token: str) -> str | None:
    """The ``jti`` claim of a compact JWS, decoded but NOT verified (a lookup key only)."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > MAX_TOKEN_BYTES:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    jti = payload.get("jti") if isinstance(payload, dict) else None
    return jti if isinstance(jti, str) and jti else None


#: ``revocation_key_of``'s answer for this request ("" for none).
_REVOCATION_KEY = web.RequestKey("urr_entry_revocation_key", str)


class RevocationCheck(Protocol):
    async def is_revoked(self, request: web.Request, user_id: str, jti: str) -> bool: ...

    def verdict(self, request: web.Request, user_id: str, jti: str) -> bool | None:
        """The answer without waiting, when one is at hand (``None``: ``is_revoked`` asks)."""
        ...


class RedisRevocationCheck:
    """One ``EXISTS`` within ``timeout_s``.

    ``exists``: a cheaper way to send it (the rate limiter's pipelined connection,
    ``SlidingWindowLimiter.key_exists``); redis-py's client when it is absent or the key's
    cluster slot moved.
    """

    def __init__(
        self,
        redis: Callable[[], Redis | RedisCluster],
        timeout_s: float,
        failures: Counter,
        exists: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._failures = failures
        self._exists = exists
        self._failing = False

    async def _lookup(self, key: str) -> int:
        if self._exists is not None:
            try:
                return await self._exists(key)
            except RedirectedError:
                pass  # redis-py's cluster client follows the move
        return int(await self._redis().exists(key))

    async def is_revoked(self, request: web.Request, user_id: str, jti: str) -> bool:
        key = revoked_entry_token_key(user_id, jti)
        lookup: asyncio.Future[int] = asyncio.ensure_future(self._lookup(key))
        try:
            # Shielded: a command cancelled mid-reply makes redis-py drop the connection, and
            # reconnecting under load is what would make the next lookups late too. A late
            # lookup finishes in the background and its connection goes back to the pool.
            async with asyncio.timeout(self._timeout_s):
                found = await asyncio.shield(lookup)
        except Exception as exc:  # any Redis failure: fail open, see the module docstring
            lookup.add_done_callback(_consume_outcome)
            self._failures.inc()
            if not self._failing:
                self._failing = True
                _LOG.warning("revocation_check_unavailable", error=repr(exc)[:200])
            return False
        if self._failing:
            self._failing = False
            _LOG.info("revocation_check_recovered")
        return bool(found)

    def verdict(self, request: web.Request, user_id: str, jti: str) -> bool | None:
        return None  # always a lookup


#: Reads an earlier step's answer for ``key`` off the request: ``None`` when it has none.
VerdictReader = Callable[[web.Request, str], "bool | None"]


def stored_verdict(request: web.Request, key: str) -> bool | None:
    """The answer stored as ``ENTRY_TOKEN_REVOCATION``, if it is for exactly ``key``."""
    verdict: RevocationVerdict | None = request.get(ENTRY_TOKEN_REVOCATION)
    if verdict is not None and verdict.key == key:
        return verdict.revoked
    return None


class PrecheckedRevocation:
    """Use the rate limiter's verdict when it covers this key, else ask ``fallback``."""

    def __init__(self, fallback: RevocationCheck, verdict_of: VerdictReader = stored_verdict):
        self._fallback = fallback
        self._verdict_of = verdict_of

    def verdict(self, request: web.Request, user_id: str, jti: str) -> bool | None:
        """The rate limiter's answer for this key, if its round trip looked it up."""
        return self._verdict_of(request, revoked_entry_token_key(user_id, jti))

    async def is_revoked(self, request: web.Request, user_id: str, jti: str) -> bool:
        verdict = self._verdict_of(request, revoked_entry_token_key(user_id, jti))
        if verdict is not None:
            return verdict
        return await self._fallback.is_revoked(request, user_id, jti)


def _consume_outcome(lookup: asyncio.Future[int]) -> None:
    """Retrieve a late lookup's error so asyncio does not report it as never retrieved."""
    if not lookup.cancelled():
        lookup.exception()
