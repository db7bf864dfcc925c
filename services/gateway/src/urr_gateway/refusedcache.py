"""Refused tokens remembered briefly, so a repeated forged token costs a lookup, not a verify.

Keyed by the SHA-256 of the token (as the verified cache), bounded with least-recently-used
eviction (a flood of one forged token keeps its entry warm; a flood of distinct ones evicts
the oldest and costs a verify each, which the rate limiter then bounds per client address),
and an entry lives ``ttl_s`` at most. Only refusals that stay true are stored: an unknown
``kid`` (the key may be published a moment later) and a token not valid *yet* are checked
again every time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from urr_common.tokens import TokenRejection

#: Refusals that a later attempt could reverse (key rotation, clock) are never remembered.
TRANSIENT_REJECTIONS = frozenset({TokenRejection.UNKNOWN_KEY, TokenRejection.NOT_YET_VALID})


class RefusedTokenCache:
    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_entries = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[float, TokenRejection]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max_entries > 0 and self._ttl_s > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> TokenRejection | None:
        """Why the token with this digest was refused, if it was within ``ttl_s``."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        valid_until, reason = entry
        if self._clock() >= valid_until:
            del self._entries[digest]
            return None
        self._entries.move_to_end(digest)
        return reason

    def put(self, digest: bytes, reason: TokenRejection) -> None:
        if not self.enabled or reason in TRANSIENT_REJECTIONS:
            return
        self._entries.pop(digest, None)
        while len(self._entries) >= self._max_entries:
            self._entries.popitem(last=False)
        self._entries[digest] = (self._clock() + self._ttl_s, reason)
