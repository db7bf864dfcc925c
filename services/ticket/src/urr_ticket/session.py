"""The end of the caller's Tier-2 session, as the ticket service can see it: the ``exp`` of
the entry token the request carries (header ``x-queue-entry-token``, else the
``urr-entry-token`` cookie). The queue signs the token to expire when the admitted session
ends, and polling never renews it.

The gateway verifies that token (signature, expiry, user, event, revocation) before it lets
a seat request through, and signs the user into ``X-Urr-Identity``; a seat request without a
valid assertion never gets here, so the ticket service reads the claims without verifying the
signature again. It still refuses a token for another user or event. A request without one
has no known session end: its holds end after ``holdSeconds``.
"""

from __future__ import annotations

from typing import Any

import jwt

from urr_common.tokens import MAX_TOKEN_BYTES

ENTRY_TOKEN_HEADER = "x-queue-entry-token"  # noqa: S105 (a header name)
ENTRY_TOKEN_COOKIE = "urr-entry-token"  # noqa: S105 (a cookie name)


class SessionRefused(Exception):
    """The token cannot describe this caller's session; ``code`` is the problem code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def session_end_ms(token: str | None, user_id: str, event_id: str) -> int | None:
    """When the caller's session ends (ms since the epoch), or None without a token."""
    if not token:
        return None
    claims = _claims(token.strip())
    if claims.get("sub") != user_id:
        raise SessionRefused("entry_token_wrong_user", "the entry token belongs to another user")
    if claims.get("evt") != event_id:
        raise SessionRefused("entry_token_wrong_event", "the entry token is for another event")
    expires = claims.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0:
        raise SessionRefused("entry_token_invalid", "the entry token has no expiry")
    return expires * 1000


def _claims(token: str) -> dict[str, Any]:
    if len(token) > MAX_TOKEN_BYTES:
        raise SessionRefused("entry_token_invalid", "the entry token is too large")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise SessionRefused("entry_token_invalid", "the entry token is not readable") from exc
    if not isinstance(claims, dict):
        raise SessionRefused("entry_token_invalid", "the entry token is not readable")
    return claims
