"""Redis keys the gateway reads (hash-tagged by user, so one user's keys share a slot)."""

from __future__ import annotations


def revoked_entry_token_key(user_id: str, jti: str) -> str:
    """Set by the queue service (``SET ... PX ttl``) when it revokes an entry token."""
    return f"{{u:{user_id}}}:revoked:{jti}"
