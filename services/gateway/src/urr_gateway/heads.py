"""A message head's fields read in one pass, once llhttp has accepted the head.

httptools hands each header field to Python as it is parsed: two Cython callbacks (name,
value) and one Python call per field, each with its own bytes objects. In the gateway's
profile that was the largest share of llhttp's time (eight fields a proxied request: the
client's and the upstream's). The two listeners that read whole heads (the public listener
for a request that arrives in one read, the upstream client for every answer) run a parser
without the field callbacks and read the fields here instead, from the same bytes, after
llhttp called ``on_headers_complete`` for them: llhttp still checks every byte (tokens,
values, CRLF, smuggling shapes), so what is read here is only ever a head it accepted.

The reading is narrower than llhttp's grammar on purpose: any head it does not recognise
(unusual spacing in the request or status line, for instance) is not read here: the
same bytes are replayed through a parser with callbacks (``replay_request``,
``replay_response``), which gives exactly what the callbacks would have given.
``tests/test_gateway_heads.py`` checks both against llhttp's own callbacks on fuzzed heads.

What llhttp hands over, and is reproduced here: a field's name as sent; its value without
the whitespace (SP, HTAB) after the colon, with any trailing whitespace kept; leading CR/LF
before a message skipped; the status line's reason as the bytes after ``HTTP/x.y ddd ``.
"""

from __future__ import annotations

import contextlib

import httptools

_CR = b"\r"
_COLON = b":"
_OWS = b" \t"
_LEADING = b"\r\n"


def _fields(data: bytes, at: int) -> tuple[list[tuple[bytes, bytes]], int]:
    """The fields from ``at`` (the start of the first field's line) to the blank line, and
    where that blank line begins. On a head llhttp accepted, CR comes only in CRLF, a name
    has no colon and a field's value follows the first one: each field costs two searches
    for one byte (``memchr``) whatever its length, not a pass over its bytes in Python."""
    fields = []
    find = data.find
    end = find(_CR, at)
    while end > at:
        colon = find(_COLON, at, end)
        fields.append((data[at:colon], data[colon + 1 : end].lstrip(_OWS)))
        at = end + 2
        end = find(_CR, at)
    return fields, at


def request_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``(target, fields)`` of ``head``: one whole request head llhttp accepted (possibly
    after CR/LF it skipped), nothing after it."""
    read = read_request(head)
    if read is None:
        url, fields, _ = replay_request(head)
        return url, fields
    return read


def read_request(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """``request_head`` in one pass; ``None``: a shape left to the replay."""
    if head[:1] in _LEADING:  # b"" is "in" every bytes: an empty head is not one either
        head = head.lstrip(_LEADING)
    line_end = head.find(_CR)
    parts = head[:line_end].split(b" ")
    if len(parts) != 3 or not parts[1]:  # llhttp allows more spaces: replayed
        return None
    return parts[1], _fields(head, line_end + 2)[0]


def response_head(data: bytes, start: int) -> tuple[bytes, list[tuple[bytes, bytes]], int]:
    """``(reason, fields, end)`` of the answer head that begins at ``data[start:]`` (llhttp
    accepted it and called ``on_headers_complete`` for it; ``end``: the offset just after
    it, where an interim answer's successor begins)."""
    read = read_response(data, start)
    if read is None:
        line_at = len(data) - len(data[start:].lstrip(_LEADING))
        end = data.find(b"\r\n\r\n", line_at) + 4
        reason, fields = replay_response(data[start:end])
        return reason, fields, end
    return read


def read_response(data: bytes, start: int) -> tuple[bytes, list[tuple[bytes, bytes]], int] | None:
    """``response_head`` in one pass; ``None``: a shape left to the replay."""
    if data[start : start + 1] in _LEADING:
        stripped = data[start:].lstrip(_LEADING)
        if not stripped:
            return None
        start = len(data) - len(stripped)
    line_end = data.find(_CR, start)
    # ``HTTP/d.d ddd`` then, when there is one, a space and the reason (llhttp refuses
    # other shapes of the version and code; anything else is replayed).
    if line_end - start < 12 or data[start + 8] != 0x20:
        return None
    if line_end - start > 12 and data[start + 12] != 0x20:
        return None
    fields, blank = _fields(data, line_end + 2)
    return data[start + 13 : line_end], fields, blank + 2


class _Collector:
    """llhttp's callbacks for one head, kept (the replay of a head the fast read declined)."""

    __slots__ = ("done", "fields", "reason", "url")

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.done = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.done:  # not a chunked body's trailer fields
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.done = True


def replay_request(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bool]:
    """``(target, fields, head complete)`` llhttp's callbacks give for the request head at
    the start of ``data``, as far as llhttp reads it (a malformed head: the fields before
    the error)."""
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        parser.feed_data(data)
    return collector.url, collector.fields, collector.done


def replay_response(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """``(reason, fields)`` llhttp's callbacks give for the answer head ``data`` (one head,
    already accepted by llhttp)."""
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
        parser.feed_data(data)
    return collector.reason, collector.fields
