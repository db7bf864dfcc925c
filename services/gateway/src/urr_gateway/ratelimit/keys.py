"""Every Redis key the limiter touches, hash-tagged by subject.

All keys of one subject carry ``{<subject>}`` so they live in one Redis Cluster slot and one
script may touch them together (the windows of a category and the revoked-jti flag).
"""

from __future__ import annotations


def window_key(subject: str, category: str, window_s: int) -> str:
    """The sliding log of one subject in one window of one category."""
    return f"{{{subject}}}:rl:{category}:{window_s}"


def window_key_suffix(category: str, window_s: int) -> str:
    """The part of :func:`window_key` after the hash tag (precomputed per category)."""
    return f":rl:{category}:{window_s}"


def user_subject(user_id: str) -> str:
    """A logged-in caller's subject; the same string ``context.rate_limit_subject`` builds."""
    return f"u:{user_id}"


def check_api_subject(key: str) -> str:
    """Subjects named through the check API live apart from the gateway's own subjects, so an
    internal caller cannot spend a user's or an address's gateway quota by accident."""
    return f"k:{key}"


def revoked_jti_key(user_id: str, jti: str) -> str:
    """Set (with a PX TTL up to the token's expiry) by the queue service when it revokes an
    entry token; same hash tag as the user's subject, so the limiter reads it in its script."""
    return f"{{{user_subject(user_id)}}}:revoked:{jti}"


def hash_tag(key: str) -> str | None:
    """The hash tag of ``key`` as Redis Cluster reads it (first ``{...}`` that is non-empty)."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]
