"""Validation of the identifiers clients send: event ids and request ids."""

from __future__ import annotations

import re

#: Event ids are plain tokens: they appear in paths, cookies, keys and log lines.
_EVENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
#: Sort keys starting with this hold per-user claims; a request id (a UUID) never does.
USER_CLAIM_PREFIX = "user#"
#: Sort keys starting with this hold the line: one item per number handed out.
LINE_PREFIX = "line#"
#: The counters item listing the active events (no event id can start with ``#``).
ACTIVE_REGISTRY_ID = "#active"


def is_event_id(value: object) -> bool:
    # fullmatch: ``$`` would let a trailing newline through.
    return isinstance(value, str) and _EVENT_ID_RE.fullmatch(value) is not None


def parse_request_id(value: object) -> str | None:
    """The canonical (lower-case) form of a UUID in its 36-character text form, else None.

    The whole text must match (``fullmatch``: ``$`` let a trailing newline through, and
    ``uuid.UUID`` then raised, a 500 for a bad body); what matches is already the canonical
    text but for its case, so ``lower()`` gives what ``str(uuid.UUID(value))`` gave without
    building the object on every check and assign.
    """
    if not isinstance(value, str) or _UUID_RE.fullmatch(value) is None:
        return None
    return value.lower()


def user_claim_key(user_id: str) -> str:
    return USER_CLAIM_PREFIX + user_id


def line_key(epoch: int, position: int) -> str:
    """The sort key of the line item of number ``position`` in room run ``epoch``."""
    return f"{LINE_PREFIX}{epoch}#{position}"
