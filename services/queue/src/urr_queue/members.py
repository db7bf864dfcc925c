"""Identifiers: event ids, user ids, and how a user id is stored as a queue member.

Waiting users are the bulk of Redis memory, so a user id that is an RFC 4122 UUID (what the
auth service issues) is stored as its 16 raw bytes instead of 36 characters: about 16 bytes
less per waiting user. Any other id is stored as its ASCII text. The two never collide: a
raw RFC 4122 UUID always has byte 8 in 0x80-0xBF, and text ids are plain ASCII.
"""

from __future__ import annotations

import re
import uuid

EVENT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Ids the gateway forwards; no braces (they would break the ``{u:<id>}`` hash tag).
USER_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")

_UUID_BYTES = 16


def is_event_id(value: str) -> bool:
    return EVENT_ID_RE.fullmatch(value) is not None


def is_user_id(value: str) -> bool:
    return USER_ID_RE.fullmatch(value) is not None


def encode_member(user_id: str) -> bytes:
    """The queue member for ``user_id`` (16 bytes for a canonical UUID, else the text)."""
    if len(user_id) == 36:
        try:
            parsed = uuid.UUID(user_id)
        except ValueError:
            parsed = None
        if parsed is not None and str(parsed) == user_id and parsed.variant == uuid.RFC_4122:
            return parsed.bytes
    return user_id.encode("ascii")


def decode_member(member: bytes) -> str:
    """The user id a queue member stands for (inverse of ``encode_member``)."""
    if len(member) == _UUID_BYTES and member[8] & 0xC0 == 0x80:
        return str(uuid.UUID(bytes=member))
    return member.decode("ascii")
