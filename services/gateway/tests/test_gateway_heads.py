"""``heads``: a head's target, reason and fields read in one pass must be exactly what
llhttp's callbacks hand over, on every head llhttp accepts (fuzzed), and the listeners that
use it must behave as with the callbacks."""

from __future__ import annotations

import contextlib
import random

import httptools
import pytest

from urr_gateway.heads import (
    read_request,
    read_response,
    replay_request,
    request_head,
    response_head,
)

_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Bytes that make a head interesting: separators, whitespace of every kind, controls,
#: obs-text, and bytes llhttp refuses.
_ODD = b' \t:\r\n\x00\x01\x0b\x0c\x7f\x80\xa0\xe9\xff;,="/\\?#%'
_NAMES = [
    b"Host",
    b"Cookie",
    b"X-Request-Id",
    b"x-queue-entry-token",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Connection",
    b"Expect",
    b"A",
    b"X-MiXeD-CaSe",
]
_METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"get", b"G T"]
_TARGETS = [b"/", b"/api/v1/events/e1/seats", b"/a?b=c:d", b"http://h:1/x", b"*", b"h:443", b""]


class _Reference:
    """llhttp's callbacks, kept up to the first head's end."""

    def __init__(self) -> None:
        self.url = b""
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.heads = 0
        self.first: tuple[bytes, list[tuple[bytes, bytes]]] | None = None
        self.statuses: list[int] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.heads += 1
        if self.first is None:
            self.first = (self.url, list(self.fields))


class _Answers:
    """llhttp's callbacks for each answer head: ``(reason, fields, status)``."""

    def __init__(self) -> None:
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.heads: list[tuple[bytes, list[tuple[bytes, bytes]], int]] = []
        self.parser: httptools.HttpResponseParser | None = None

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.heads) == 0 or self.heads[-1][2] < 200:
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.heads.append((self.reason, self.fields, self.parser.get_status_code()))
        self.reason, self.fields = b"", []


def _value(rng: random.Random) -> bytes:
    shape = rng.random()
    if shape < 0.4:
        return rng.choice([b"x", b"keep-alive", b"a=b; c=d", b"1", b"0", b"", b"chunked"])
    length = rng.randint(0, 12)
    pool = _TOKEN + _ODD if shape < 0.8 else _ODD
    return bytes(rng.choice(pool) for _ in range(length))


def _name(rng: random.Random) -> bytes:
    if rng.random() < 0.7:
        return rng.choice(_NAMES)
    pool = _TOKEN + (_ODD if rng.random() < 0.3 else b"")
    return bytes(rng.choice(pool) for _ in range(rng.randint(0, 8)))


def _ows(rng: random.Random) -> bytes:
    return rng.choice([b"", b" ", b"  ", b"\t", b" \t ", b"\x0b", b"\r"])


def _eol(rng: random.Random) -> bytes:
    return b"\r\n" if rng.random() < 0.9 else rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"])


def _fields(rng: random.Random) -> bytes:
    out = b""
    for _ in range(rng.randint(0, 6)):
        line = _name(rng) + rng.choice([b":", b":", b":", b" :", b""]) + _ows(rng)
        out += line + _value(rng) + rng.choice([b"", b"", b" ", b"\t", b" \t"]) + _eol(rng)
    return out


def _request(rng: random.Random) -> bytes:
    lead = rng.choice([b"", b"", b"", b"\r\n", b"\r\n\r\n", b"\n", b"\r\r\n"])
    space = rng.choice([b" ", b" ", b" ", b"  ", b"\t"])
    target = rng.choice(_TARGETS)
    if rng.random() < 0.2:
        target += bytes(rng.choice(_ODD + _TOKEN) for _ in range(3))
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b""])
    line = rng.choice(_METHODS) + space + target + rng.choice([b" ", b" ", b"  "]) + version
    return lead + line + _eol(rng) + _fields(rng) + _eol(rng)


def _response(rng: random.Random) -> bytes:
    lead = rng.choice([b"", b"", b"", b"\r\n", b"\n"])
    version = rng.choice([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/11"])
    status = rng.choice([b"200", b"200", b"404", b"204", b"103", b"2000", b"20"])
    reason = rng.choice([b" OK", b" OK", b"", b" ", b"  ", b" Not Found ", b"\tOK", b" O\x80K"])
    space = rng.choice([b" ", b" ", b" ", b"  "])
    return lead + version + space + status + reason + _eol(rng) + _fields(rng) + _eol(rng)


def test_a_request_head_reads_as_llhttps_callbacks_hand_it_over() -> None:
    rng = random.Random(17)
    accepted = fast = 0
    for _ in range(40_000):
        head = _request(rng)
        reference = _Reference()
        parser = httptools.HttpRequestParser(reference)
        with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
            parser.feed_data(head)
        if reference.first is None:
            continue  # llhttp refused it, or it is not one whole head: never read here
        if head.find(b"\r\n\r\n") != len(head) - 4:
            continue  # the listener reads only a read that is exactly one head
        accepted += 1
        read = read_request(head)
        if read is not None:
            fast += 1
            assert read == reference.first, head
        assert request_head(head) == reference.first, head
    # The fuzz reached both the accepted shapes and the one-pass read of most of them.
    assert accepted > 1_000
    assert fast > accepted * 0.3, (fast, accepted)


def test_an_answer_head_reads_as_llhttps_callbacks_hand_it_over() -> None:
    rng = random.Random(18)
    accepted = fast = 0
    for _ in range(40_000):
        interim = _response(rng) if rng.random() < 0.1 else b""
        head = _response(rng)
        body = rng.choice([b"", b"{}", b"\r\nX-Not: a-field\r\n\r\n"])
        data = interim + head + body
        reference = _Answers()
        parser = reference.parser = httptools.HttpResponseParser(reference)
        with contextlib.suppress(httptools.HttpParserError, httptools.HttpParserUpgrade):
            parser.feed_data(data)
        heads = reference.heads
        at = 0
        for reason, fields, code in heads:
            accepted += 1
            read = read_response(data, at)
            if read is not None:
                fast += 1
                assert read[:2] == (reason, fields), data
            got_reason, got_fields, end = response_head(data, at)
            assert (got_reason, got_fields) == (reason, fields), data
            if code >= 200:
                break
            at = end
    assert accepted > 1_000
    assert fast > accepted * 0.3, (fast, accepted)


def test_a_refused_head_replays_the_fields_before_its_error() -> None:
    url, fields, complete = replay_request(
        b"GET /x HTTP/1.1\r\nX-Request-Id: kept-3\r\nX-A: 1\nX-B: 2\r\n\r\n"
    )
    assert (url, complete) == (b"/x", False)
    assert fields[0] == (b"X-Request-Id", b"kept-3")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", (b"/", [])),
        (b"\r\nGET /a HTTP/1.1\r\nA:  x y  \r\nB:\t\tz\t\r\nC:\r\n\r\n", None),
        (b"GET  /two-spaces HTTP/1.1\r\nA: b: c\r\n\r\n", None),
    ],
)
def test_known_heads(head: bytes, expected: object) -> None:
    reference = _Reference()
    httptools.HttpRequestParser(reference).feed_data(head)
    assert request_head(head) == reference.first
    if expected is not None:
        assert reference.first == expected
