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
