"""Tier-1 bridging: what a ``urr-vwr-token`` proves, and the place it gives in Tier 2.

The Tier-1 Lambda signs the position a request was served at. That signed position is the
only way to get an early place in an event behind a Tier-1 room; a position from a query
parameter or a body is never read.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeGuard

from urr_common.logs import get_logger
from urr_common.tokens import (
    KeyMaterialError,
    KeySet,
    TokenError,
    TokenRejection,
    TokenVerifier,
    load_verification_keys,
)

_LOG = get_logger(__name__)

TIER1_COOKIE = "urr-vwr-token"
TIER1_HEADER = "X-Vwr-Token"
#: Bitmaps of heartbeats are indexed by queue number; Redis bitmaps end at 2^32.
MAX_POSITION = 2**32 - 1
_MAX_REQUEST_ID = 128
_REQUIRED = ("iss", "aud", "exp", "sub", "evt", "rid", "pos")
#: Unknown kid: reread the key folder at most this often.
_RELOAD_INTERVAL_S = 5.0


class Tier1Outcome(StrEnum):
    """Result of looking at a request's Tier-1 token (a metric label)."""

    VALID = "valid"
    MISSING = "missing"
    INVALID = "invalid"  # bad signature, unknown key, malformed, wrong issuer/audience
    EXPIRED = "expired"
    WRONG_EVENT = "wrong_event"
    WRONG_USER = "wrong_user"
    BAD_CLAIMS = "bad_claims"


@dataclass(frozen=True)
class Tier1Pass:
    """A verified Tier-1 token: the place it was served at and the request it belongs to."""

    position: int
    request_id: str
    #: A pre-queue pass (claim ``pq``): the sale start (epoch ms) of the pre-queue it joins.
    #: Its ``position`` then names the place (and the heartbeat bit), not its turn.
    prequeue_sale_ms: int | None = None
    #: When Tier 1 signed it (``iat``, epoch s; 0 when absent): a pre-queue event refuses a
    #: pass signed before its pre-queue opened (another run of the room).
    issued_at: int = 0

    @property
    def place(self) -> str:
        """The Tier-1 place this pass stands for, as Tier 2 keys it (it admits once)."""
        return place_key(self.request_id, self.position)


def place_key(request_id: str, position: int) -> str:
    """``<request id>#<position>``: one Tier-1 place (the Tier-1 row's key and its number).

    The number is part of the key so that a row the Tier-1 room writes again for the same
    request id (after its 24 h expiry, or a reset) is a new place, not the spent one.
    """
    return f"{request_id}#{position}"


def parse_place_key(place: str) -> tuple[str, int] | None:
    """``(request id, position)`` of a ``place_key``; ``None`` for anything else."""
    request_id, sep, number = place.rpartition("#")
    if not sep or not request_id or not number.isdigit():
        return None
    return request_id, int(number)


def expand_key_files(patterns: list[Path]) -> list[Path]:
    """Key files named directly or by glob pattern (``.urr/keys/vwr/public/*.pem``)."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if any(char in text for char in "*?["):
            found += [Path(name) for name in sorted(glob.glob(text))]
        elif pattern.exists():
            found.append(pattern)
    return found


class Tier1Checker:
    """Verifies Tier-1 tokens with the public keys found in the configured files."""

    def __init__(
        self,
        key_files: list[Path],
        *,
        issuer: str,
        audience: str,
        leeway_s: int,
        reload_interval_s: float = _RELOAD_INTERVAL_S,
    ) -> None:
        self._patterns = key_files
        self._reload_interval_s = reload_interval_s
        self._verifier = TokenVerifier(
            keys=KeySet(),
            issuer=issuer,
            audience=audience,
            leeway_s=leeway_s,
            required_claims=_REQUIRED,
        )
        self._loaded_at = float("-inf")
        self.reload()

    def reload(self) -> None:
        self._loaded_at = time.monotonic()
        try:
            keys = load_verification_keys(expand_key_files(self._patterns))
        except (OSError, KeyMaterialError) as exc:
            _LOG.warning("tier1_keys_unreadable", error=str(exc))
            return
        if not keys:
            _LOG.warning("tier1_keys_missing", patterns=[str(p) for p in self._patterns])
        self._verifier.keys = KeySet(keys)

    def check(
        self, token: str | None, event_id: str, user_id: str
    ) -> tuple[Tier1Outcome, Tier1Pass | None]:
        if not token:
            return Tier1Outcome.MISSING, None
        try:
            claims = self._verify(token)
        except TokenError as exc:
            if exc.reason is TokenRejection.EXPIRED:
                return Tier1Outcome.EXPIRED, None
            if exc.reason is TokenRejection.MISSING_CLAIM:
                return Tier1Outcome.BAD_CLAIMS, None
            return Tier1Outcome.INVALID, None
        return judge_claims(claims, event_id, user_id)

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            return self._verifier.verify(token)
        except TokenError as exc:
            stale = time.monotonic() - self._loaded_at >= self._reload_interval_s
            if exc.reason is not TokenRejection.UNKNOWN_KEY or not stale:
                raise
        self.reload()
        return self._verifier.verify(token)


def judge_claims(
    claims: dict[str, Any], event_id: str, user_id: str
) -> tuple[Tier1Outcome, Tier1Pass | None]:
    """Check the Tier-1 claims of a verified token against this event and user."""
    if claims.get("evt") != event_id:
        return Tier1Outcome.WRONG_EVENT, None
    uid = claims.get("uid")
    if uid is not None and uid != user_id:
        return Tier1Outcome.WRONG_USER, None
    position = claims.get("pos")
    request_id = claims.get("rid")
    if (
        not isinstance(position, int)
        or isinstance(position, bool)
        or not 1 <= position <= MAX_POSITION
        or not isinstance(request_id, str)
        or not 1 <= len(request_id) <= _MAX_REQUEST_ID
    ):
        return Tier1Outcome.BAD_CLAIMS, None
    sale = claims.get("pq")
    if sale is not None and not _is_count(sale):
        return Tier1Outcome.BAD_CLAIMS, None
    # Tier 1 signs ``iat`` as whole seconds; anything else only matters to a pre-queue
    # event, which then refuses the pass as signed too early.
    issued = claims.get("iat")
    return Tier1Outcome.VALID, Tier1Pass(
        position=position,
        request_id=request_id,
        prequeue_sale_ms=sale,
        issued_at=issued if _is_count(issued) else 0,
    )


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53
