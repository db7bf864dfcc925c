"""Issue 17: the gateway's own ``Cookie`` header parser reads every header as aiohttp's private
``parse_cookie_header`` did (what ``GatewayRequest.cookies`` used, and what aiohttp's own
``web.Request.cookies`` uses): a differential fuzz against aiohttp, and a fixed corpus of its
answers. The oracle is aiohttp's private helper in the tests only (the public
``web.Request.cookies`` costs ~2 ms a call through a mocked request, too slow for the fuzz); an
aiohttp without it fails these tests, never skips them, so the oracle is replaced on purpose."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from urr_gateway.cookieheader import parse_cookie_header

try:
    from aiohttp._cookie_helpers import parse_cookie_header as _aiohttp_parse
except ImportError:  # a later aiohttp: the differential tests fail and say why
    _aiohttp_parse = None  # type: ignore[assignment]


def _aiohttp(header: str) -> dict[str, str]:
    if _aiohttp_parse is None:
        pytest.fail(
            "aiohttp no longer has _cookie_helpers.parse_cookie_header: compare with "
            "web.Request.cookies instead (the fixed corpus still holds the parser)"
        )
    return {name: morsel.value for name, morsel in _aiohttp_parse(header)}


def _ours(header: str) -> dict[str, str]:
    return dict(parse_cookie_header(header))


#: Header text, and the cookies aiohttp 3.14.5 read from it (the last of a name wins).
CORPUS: list[tuple[str, dict[str, str]]] = [
    ("", {}),
    ("a=1", {"a": "1"}),
    ("a=1; b=2", {"a": "1", "b": "2"}),
    ("a=1;b=2", {"a": "1", "b": "2"}),
    ("a=1 ; b=2", {"a": "1", "b": "2"}),
    ("  a = 1  ;  b = 2  ", {"a": "1", "b": "2"}),
    ("a=1; a=2", {"a": "2"}),
    ("a", {"a": ""}),
    ("a; b=2", {"a": "", "b": "2"}),
    ("a=", {"a": ""}),
    ("a=;b=", {"a": "", "b": ""}),
    ("=1", {}),
    ("=; a=1", {"a": "1"}),
    (";;a=1;;", {"a": "1"}),
    ("a=b=c", {"a": "b=c"}),
    ("a==b", {"a": "=b"}),
    ('a="quoted"', {"a": "quoted"}),
    ('a="with;semi"; b=2', {"a": "with;semi", "b": "2"}),
    ('a="esc\\"aped"', {"a": 'esc"aped'}),
    ('a="oct\\073al"', {"a": "oct;al"}),
    ('a="open; b=2', {"a": '"open', "b": "2"}),
    ('a=x"y', {"a": 'x"y'}),
    ('a="\\', {"a": '"\\'}),
    ("a=b c; d=e", {"a": "b", "c": "", "d": "e"}),
    ("a=b\tc", {"a": "b", "c": ""}),
    ("a=Wed, 09 Jun 2021 10:18:14 GMT; b=2", {"a": "Wed, 09 Jun 2021 10:18:14 GMT", "b": "2"}),
    ("expires=Wed Jun  9 10:18:14 2021; b=2", {"expires": "Wed Jun  9 10:18:14 2021", "b": "2"}),
    ("a=Sun, 06 Nov 1994 08:49:37 +0100", {"a": "Sun, 06 Nov 1994 08:49:37 +0100"}),
    ("path=/; secure; httponly", {"path": "/", "secure": "", "httponly": ""}),
    ("$Version=1; a=1", {"$Version": "1", "a": "1"}),
    ("a[]=1; b{}=2", {"a[]": "1", "b{}": "2"}),
    ("a=1, b=2", {"a": "1,", "b": "2"}),
    ("na me=1; b=2", {"na": "", "me": "1", "b": "2"}),
    ("a=ü; b=2", {"a": "ü", "b": "2"}),
    ("ü=1; b=2", {"b": "2"}),
    ("a=\x00; b=2", {"a": "\x00", "b": "2"}),
    ("a=1\nb=2", {"a": "1", "b": "2"}),
    ("a=1; ;b=2", {"a": "1", "b": "2"}),
    (
        "__Host-urr_session=eyJhbGciOiJFUzI1NiJ9.e30.c2ln; urr_csrf=abc123",
        {"__Host-urr_session": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln", "urr_csrf": "abc123"},
    ),
    ("a=%20; b=a%3Bb", {"a": "%20", "b": "a%3Bb"}),
    ("a=(x); b=<y>", {"a": "(x)", "b": "<y>"}),
    ("a=@:/?; b=!#$&'*+-.^_`|~", {"a": "@:/?", "b": "!#$&'*+-.^_`|~"}),
    ('a=""; b=""x', {"a": "", "b": '""x'}),
    ("a=1;", {"a": "1"}),
    ("a=1; ", {"a": "1"}),
    (" ; ", {}),
    (";", {}),
    ("a=1;;;;b=2", {"a": "1", "b": "2"}),
    ("a\\=1; b=2", {"b": "2"}),
    ("a=1\x7f; b=2", {"a": "1\x7f", "b": "2"}),
]

_PIECES = [
    "a", "b", "urr_session", "urr_csrf", "__Host-urr", "x.y", "n-1", "$Version", "[]", "{x}",
    "=", "=", "=", ";", ";", "; ", " ", "  ", "\t", '"', '"', "\\", '\\"', "\\073", "\\12",
    ",", "v", "value", "eyJhbGciOiJFUzI1NiJ9.e30.sig", "a%20b", "ü", "\x00", "\x7f", "\n",
    "Wed, 09 Jun 2021 10:18:14 GMT", "Wed Jun  9 10:18:14 2021", "Sun, 06 Nov 1994 08:49:37 +0100",
    "Tuesday, 01-Jan-30 00:00:00 GMT", "()", "<>", "@", ":", "/", "?", "+", "*", "!", "#", "&",
    "'", "~", "`", "^", "|", "%", "$", ".", "-", "_", "path", "secure", "expires",
]  # fmt: skip


def _random_headers(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    headers = []
    for _ in range(count):
        if rng.random() < 0.3:  # the usual shape, sometimes slightly off
            pairs = [
                f"{rng.choice(_PIECES[:9])}={rng.choice(_PIECES[26:34])}"
                for _ in range(rng.randint(1, 5))
            ]
            headers.append(rng.choice(["; ", ";", " ; ", ";  "]).join(pairs))
        else:
            headers.append("".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 14))))
    return headers


def test_reads_random_headers_as_aiohttp() -> None:
    headers = _random_headers(20_000, seed=17)
    diverging = [h for h in headers if _ours(h) != _aiohttp(h)]
    assert not diverging, f"{len(diverging)} of {len(headers)}: {diverging[:10]!r}"


def test_reads_plain_headers_as_aiohttp() -> None:
    """The fast path (``a=b; c=d``, plain names and values): every character it allows, in
    names and values, with both separators, and near misses that must leave it."""
    rng = random.Random(22)
    names = "ABCxyz019_.-"
    values = "ABCxyz019_.-~%+/=:,!#$&'*^`|?@"
    headers = []
    for _ in range(5_000):
        pairs = [
            "".join(rng.choice(names) for _ in range(rng.randint(1, 6)))
            + "="
            + "".join(rng.choice(values) for _ in range(rng.randint(0, 12)))
            for _ in range(rng.randint(1, 4))
        ]
        header = rng.choice(["; ", ";"]).join(pairs)
        if rng.random() < 0.2:  # one character off the fast path's alphabet
            at = rng.randrange(len(header) + 1)
            header = header[:at] + rng.choice(' ";=\t()<>[]{}\x00ü') + header[at:]
        headers.append(header)
    diverging = [h for h in headers if _ours(h) != _aiohttp(h)]
    assert not diverging, f"{len(diverging)} of {len(headers)}: {diverging[:10]!r}"


@settings(max_examples=1500, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=20).map("".join)
    | st.text(max_size=40)
    | st.text(alphabet=' ;=",\\\tabc0Wed:GMT', max_size=40)
)
def test_reads_any_text_as_aiohttp(header: str) -> None:
    assert _ours(header) == _aiohttp(header)


def test_the_fixed_corpus_is_what_aiohttp_answers() -> None:
    """The corpus was recorded from aiohttp; while it has the helper, they must agree."""
    for header, expected in CORPUS:
        assert _aiohttp(header) == expected, header


@pytest.mark.parametrize(("header", "expected"), CORPUS)
def test_reads_the_fixed_corpus(header: str, expected: dict[str, str]) -> None:
    assert _ours(header) == expected


def test_the_result_is_read_only() -> None:
    cookies = parse_cookie_header("a=1; b=2")
    with pytest.raises(TypeError):
        cookies["a"] = "x"  # type: ignore[index]


def test_the_gateway_imports_no_private_aiohttp_module() -> None:
    """A private helper may change or vanish in any aiohttp release, silently."""
    source = Path(__file__).parents[1] / "src" / "urr_gateway"
    private = re.compile(r"^\s*(from|import)\s+aiohttp\._", re.MULTILINE)
    offenders = [p.name for p in source.rglob("*.py") if private.search(p.read_text())]
    assert offenders == []
