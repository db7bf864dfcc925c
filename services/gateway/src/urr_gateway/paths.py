"""One canonical form for every request path, computed before any filter looks at it.

Filters and the upstream must agree on which route a request is for, or a request could be
checked as ``/api/v1/events/..`` and served as ``/api/v1/admin/...``. So the raw path (as the
client sent it, still percent-encoded) is decoded exactly once here, refused when it is
ambiguous, and re-encoded in one canonical way. The filters see ``path`` and the upstream gets
``raw``, which decodes back to ``path`` (a property the tests fuzz).

Refused (400 ``invalid_path``): dot segments (``.``, ``..``, also encoded as ``%2e``), encoded
``/`` or ``\\`` (``%2f``, ``%5c``), anything that decodes to ``%`` (double encoding such as
``%252f``), backslashes, ``;`` (path parameters some servers strip), control characters,
bytes that are not UTF-8, malformed escapes and over-long paths. Repeated slashes are
collapsed (``//a`` is ``/a``); a trailing slash is kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

MAX_PATH_LENGTH = 2048
#: Characters a path segment may carry unencoded (RFC 3986 pchar without ``;``).
_SEGMENT_SAFE = "!$&'()*+,=:@-._~"
_HEX = frozenset("0123456789abcdefABCDEF")
#: Refused in a decoded segment: separators, the escape character itself, path parameters.
_FORBIDDEN_DECODED = frozenset("/\\%;")
#: A path already in canonical form (the common case): single slashes between segments made
#: only of characters that need no encoding. Dot segments are checked separately.
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9!$&'()*+,=:@._~-]+)*/?")


class InvalidPath(ValueError):
    """The path is ambiguous or malformed; the message says why (safe to show the client)."""


@dataclass(frozen=True, slots=True)
class NormalisedPath:
    """A request path in canonical form."""

    #: Decoded segments, none empty, none ``.`` or ``..``.
    segments: tuple[str, ...]
    #: Decoded path, what filters and routes match on.
    path: str
    #: Percent-encoded path, what the upstream receives.
    raw: str


#: Plain paths (nothing to decode) already normalised: the same few paths (an event's seat
#: map, the status poll) come back on almost every request, and the answer is frozen.
#: Bounded in entries and path length (oldest entry goes first): a client sending random
#: paths costs an eviction per request, not memory. Refused paths are never kept.
_PLAIN: dict[str, NormalisedPath] = {}
_PLAIN_CACHE_MAX_ENTRIES = 4096
_PLAIN_CACHE_MAX_PATH = 256


def normalise_path(raw_path: str) -> NormalisedPath:
    """Canonicalise ``raw_path`` (percent-encoded, without query) or raise ``InvalidPath``."""
    if not raw_path.startswith("/"):
        raise InvalidPath("the path must start with /")
    if len(raw_path) > MAX_PATH_LENGTH:
        raise InvalidPath("the path is too long")
    known = _PLAIN.get(raw_path)
    if known is not None:
        return known
    if _PLAIN_PATH.fullmatch(raw_path):
        segments = tuple(raw_path.strip("/").split("/")) if len(raw_path) > 1 else ()
        if "." in segments or ".." in segments:
            raise InvalidPath("dot segments are not allowed in paths")
        normalised = NormalisedPath(segments=segments, path=raw_path, raw=raw_path)
        if len(raw_path) <= _PLAIN_CACHE_MAX_PATH:
            if len(_PLAIN) >= _PLAIN_CACHE_MAX_ENTRIES:
                del _PLAIN[next(iter(_PLAIN))]
            _PLAIN[raw_path] = normalised
        return normalised
    if "\\" in raw_path:
        raise InvalidPath("backslashes are not allowed in paths")
    segments = tuple(_decode_segment(part) for part in raw_path.split("/") if part)
    trailing = "/" if raw_path.endswith("/") and segments else ""
    path = "/" + "/".join(segments) + trailing
    raw = "/" + "/".join(quote(segment, safe=_SEGMENT_SAFE) for segment in segments) + trailing
    return NormalisedPath(segments=segments, path=path, raw=raw)


def _decode_segment(part: str) -> str:
    decoded = _percent_decode(part)
    if decoded in (".", ".."):
        raise InvalidPath("dot segments are not allowed in paths")
    for char in decoded:
        if char in _FORBIDDEN_DECODED:
            raise InvalidPath(f"{char!r} is not allowed in a path segment")
        if char < " " or char == "\x7f":
            raise InvalidPath("control characters are not allowed in paths")
    return decoded


def _percent_decode(part: str) -> str:
    """Strict single decoding: every ``%`` starts a two-digit escape, the result is UTF-8."""
    if "%" not in part:
        if not part.isascii():
            # aiohttp hands raw non-ASCII bytes over as surrogate-escaped or latin-1 text;
            # a client that means them must percent-encode them.
            raise InvalidPath("non-ASCII characters must be percent-encoded")
        return part
    out = bytearray()
    index = 0
    length = len(part)
    while index < length:
        char = part[index]
        if char == "%":
            escape = part[index + 1 : index + 3]
            if len(escape) != 2 or not _HEX.issuperset(escape):
                raise InvalidPath("malformed percent-escape in the path")
            out.append(int(escape, 16))
            index += 3
            continue
        if not char.isascii():
            raise InvalidPath("non-ASCII characters must be percent-encoded")
        out.append(ord(char))
        index += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidPath("the path does not decode to UTF-8") from exc
