"""Which viewer paths the edge gates, and the safe ``return`` path of the waiting page.

The edge matches on a normalised path (percent-decoding, dot segments and repeated slashes
resolved) because the origin would resolve them too: matching the raw string would let
``/events/%65vt`` or ``/x/../events/evt`` walk past the room.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, unquote

MAX_RETURN_LENGTH = 2048
_GATED_API_RESOURCES = frozenset({"queue", "seats", "reservations"})
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class PathKind(StrEnum):
    PASS = "pass"  # noqa: S105 - not a password
    PAGE = "page"
    API = "api"


@dataclass(frozen=True)
class GatedPath:
    kind: PathKind
    event_id: str = ""


class UnsafePath(ValueError):
    """The path cannot be normalised safely (control characters, escapes above the root)."""


def normalise_path(raw: str) -> str:
    """Percent-decode, drop empty and ``.`` segments, resolve ``..`` (never above the root)."""
    if not raw.startswith("/"):
        raise UnsafePath("a path starts with /")
    decoded = unquote(raw, errors="strict") if "%" in raw else raw
    if _CONTROL_RE.search(decoded) or "\\" in decoded:
        raise UnsafePath("control characters or backslashes in the path")
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not segments:
                raise UnsafePath("the path climbs above the root")
            segments.pop()
            continue
        segments.append(segment)
    trailing = "/" if decoded.endswith("/") and segments else ""
    return "/" + "/".join(segments) + trailing


def classify(path: str) -> GatedPath:
    """What the edge does with a normalised ``path``: gate a page, gate an API, or pass.

    Pages ``/events/{eventId}...``; APIs ``/api/v1/{queue,seats,reservations}/{eventId}...``.
    The fixed segments match case-insensitively: an origin that routes ``/Events/x`` like
    ``/events/x`` must not become a way round the room.
    """
    parts = path.split("/")[1:]
    lowered = [part.lower() for part in parts]
    if len(parts) >= 2 and lowered[0] == "events" and parts[1]:
        return GatedPath(PathKind.PAGE, parts[1])
    if (
        len(parts) >= 4
        and lowered[0] == "api"
        and lowered[1] == "v1"
        and lowered[2] in _GATED_API_RESOURCES
        and parts[3]
    ):
        return GatedPath(PathKind.API, parts[3])
    return GatedPath(PathKind.PASS)


def safe_return_path(value: str | None) -> str | None:
    """``value`` if it is a same-site relative path (no scheme, host or tricks), else None.

    Refused: anything not starting with exactly one ``/`` (``//host`` and ``/\\host`` are
    protocol-relative to browsers), backslashes, control characters, and over-long values.
    """
    if not value or len(value) > MAX_RETURN_LENGTH:
        return None
    if not value.startswith("/") or value.startswith("//"):
        return None
    if "\\" in value or _CONTROL_RE.search(value):
        return None
    try:
        decoded = unquote(value, errors="strict")
    except UnicodeDecodeError:
        return None
    if decoded.startswith("//") or "\\" in decoded or _CONTROL_RE.search(decoded):
        return None
    return value


def waiting_room_location(event_id: str, original_uri: str, querystring: str) -> str:
    """``/vwr/{eventId}?return=<the original path and query>``, the return value URL-encoded."""
    original = original_uri + (f"?{querystring}" if querystring else "")
    back = safe_return_path(original) or f"/events/{quote(event_id, safe='')}"
    return f"/vwr/{quote(event_id, safe='')}?return={quote(back, safe='')}"
