"""Verified tokens remembered briefly, so a client's next request skips the ES256 check.

Keyed by the SHA-256 of the token (the cache never holds a usable credential), bounded (the
oldest entry goes first), and an entry never outlives the token's own ``exp`` nor
``ttl_s``. Only successful verifications are stored here; refusals go to
``refusedcache.RefusedTokenCache``.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class VerifiedTokenCache(Generic[T]):
    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, T]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0 and self._ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, digest: bytes | None = None) -> T | None:
        """The value stored for ``token`` (``digest``: its ``token_digest``, when known)."""
        if not self._entries:
            return None
        digest = digest if digest is not None else token_digest(token)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        valid_until, value = entry
        if self._clock() >= valid_until:
            del self._entries[digest]
            return None
        return value

    def put(self, token: str, value: T, expires_at: float, digest: bytes | None = None) -> None:
        """Remember ``value`` until ``min(expires_at, now + ttl_s)`` (wall-clock seconds)."""
        if not self.enabled:
            return
        now = self._clock()
        valid_until = min(expires_at, now + self._ttl_s)
        if valid_until <= now:
            return
        digest = digest if digest is not None else token_digest(token)
        self._entries.pop(digest, None)
        while len(self._entries) >= self._max_entries:
            self._entries.popitem(last=False)
        self._entries[digest] = (valid_until, value)

    def clear(self) -> None:
        self._entries.clear()


def token_digest(token: str) -> bytes:
    """The key both token caches use: never the token itself."""
    return hashlib.sha256(token.encode()).digest()


class TokenDigests:
    """The digests of the tokens one client connection has shown, so its next request with
    the same token skips the SHA-256 (two a request: the access and the entry token, ~1.3
    µs each natively, the gateway's largest single Python line in the profile).

    Held by the connection and gone with it: the tokens it keeps are that client's own,
    never shared with another connection, at most ``MAX_TOKENS`` of them. A token is found
    only by exact equality of its whole text, and this maps a token to its digest and
    nothing else: whether the token is still valid (its ``exp``, the cache's ttl) and not
    revoked is decided by the caches and checks the digest leads to, on every request."""

    __slots__ = ("_shown",)

    #: Access token, entry token and a refreshed one of each.
    MAX_TOKENS = 4

    def __init__(self) -> None:
        self._shown: list[tuple[str, bytes]] = []

    def digest(self, token: str) -> bytes:
        """``token_digest(token)``, remembered for the tokens this connection showed last."""
        for shown, digest in self._shown:
            if shown == token:
                return digest
        digest = token_digest(token)
        if len(self._shown) >= self.MAX_TOKENS:
            del self._shown[0]
        self._shown.append((token, digest))
        return digest
