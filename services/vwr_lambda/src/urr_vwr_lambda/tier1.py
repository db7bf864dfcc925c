"""The Tier-1 admission token: what it says and how it is checked.

ES256 with a ``kid`` (``urr_common.tokens``), issuer and audience ``urr-vwr``. Claims: ``sub``
and ``rid`` (the request id), ``evt`` (the event), ``pos`` (the signed position Tier 2 orders
by), ``uid`` (only when a verified access token came with the assign), ``exp``, and ``pq``
(a pre-queue pass only: the sale start in epoch ms; Tier 2 puts its holder on the roster
and refuses it after that time or when its own sale start differs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from urr_common.tokens import KeySet, TokenError, TokenRejection, TokenSigner, TokenVerifier

TIER1_REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "sub", "evt", "rid", "pos")


@dataclass(frozen=True)
class Admission:
    """A verified Tier-1 token's content."""

    event_id: str
    request_id: str
    position: int
    user_id: str | None
    expires_at: int


def issue(
    signer: TokenSigner,
    *,
    event_id: str,
    request_id: str,
    position: int,
    user_id: str | None,
    now: float | None = None,
    prequeue_sale_ms: int | None = None,
) -> str:
    claims: dict[str, Any] = {"evt": event_id, "rid": request_id, "pos": position}
    if prequeue_sale_ms is not None:
        claims["pq"] = prequeue_sale_ms
    if user_id:
        claims["uid"] = user_id
    return signer.sign(request_id, claims, now=now)


def verifier(keys: KeySet, *, issuer: str, audience: str, leeway_s: int) -> TokenVerifier:
    return TokenVerifier(
        keys,
        issuer=issuer,
        audience=audience,
        leeway_s=leeway_s,
        required_claims=TIER1_REQUIRED_CLAIMS,
    )


class WrongEvent(TokenError):
    """A valid token, but for another event."""

    def __init__(self) -> None:
        super().__init__(TokenRejection.MISSING_CLAIM, "the token is for another event")


def admission_of(token_verifier: TokenVerifier, token: str, event_id: str) -> Admission:
    """Verify ``token`` and check it admits to ``event_id``; raises ``TokenError``."""
    claims = token_verifier.verify(token)
    evt, rid, pos = claims.get("evt"), claims.get("rid"), claims.get("pos")
    if not isinstance(evt, str) or not isinstance(rid, str) or rid != claims.get("sub"):
        raise TokenError(TokenRejection.MISSING_CLAIM, "evt and rid must be strings, rid = sub")
    if not isinstance(pos, int) or isinstance(pos, bool) or pos < 1:
        raise TokenError(TokenRejection.MISSING_CLAIM, "pos must be a positive integer")
    if evt != event_id:
        raise WrongEvent()
    uid = claims.get("uid")
    return Admission(
        event_id=evt,
        request_id=rid,
        position=pos,
        user_id=uid if isinstance(uid, str) else None,
        expires_at=int(claims["exp"]),
    )
