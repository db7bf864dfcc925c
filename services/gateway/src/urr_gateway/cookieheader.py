"""The request ``Cookie`` header as a name -> value mapping, parsed as aiohttp 3.12-3.14 parse
it (``aiohttp._cookie_helpers.parse_cookie_header``, which ``web.Request.cookies`` uses), so
a cookie reads the same under the gateway's protocol server and under aiohttp's.

aiohttp's helper is private (it may change or go in any release), so its rules are written
out here, held to it by a differential fuzz in ``tests/test_gateway_cookieheader.py`` and a
fixed corpus that stays when aiohttp no longer has the helper. The rules (RFC 6265 §5.4 with
aiohttp's tolerance of real-world cookies):

- pairs separated by ``;`` (or whitespace after a value), whitespace around names, ``=`` and
  values ignored; a name without ``=`` is a cookie with an empty value;
- a value in double quotes may hold ``;`` and backslash escapes (``\\"``, octal ``\\073``),
  which are unquoted; an unclosed quote runs to the next ``;``;
- a date (``Wed, 09 Jun 2021 10:18:14 GMT`` or asctime's form) is one value despite its
  spaces and comma;
- a name outside aiohttp's relaxed token alphabet is dropped; a pair the grammar cannot read
  is read as ``name=value`` up to the next ``;`` if it has an ``=``, else skipped;
- the last of several cookies of one name wins (the mapping is built in header order).

Morsels are not built (aiohttp builds one per cookie): the gateway reads values only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

# Parts of this module follow aiohttp's _cookie_helpers.py (Apache License 2.0).
_PAIR = re.compile(
    r"""
    \s*
    (?P<key>[\w\d!#%&'~_`><@,:/\$\*\+\-\.\^\|\)\(\?\}\{\[\]]+)
    (
    \s*=\s*
    (?P<val>
    "(?:[^\\"]|\\.)*"
    |
    "[^";]*
    |
    (\w{3,6}day|\w{3}),\s[\w\d\s-]{9,11}\s[\d:]{8}\s(GMT|[+-]\d{4})
    |
    \w{3}\s+\w{3}\s+[\s\d]\d\s+\d{2}:\d{2}:\d{2}\s+\d{4}
    |
    [\w\d!#%&'~_`><@,:/\$\*\+\-\.\^\|\)\(\?\}\{\=\[\]]*
    )
    )?
    \s*
    (\s+|;|$)
    """,
    re.VERBOSE | re.ASCII,
)
_NAME = re.compile(r"^[!#$%&\'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]+$")
_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))")
#: The common shape (``a=b; c=d`` with plain names and values, no quotes or spaces inside):
#: the grammar reads it as a plain split on ``;`` and the first ``=`` of each pair.
_PLAIN = re.compile(
    r"[A-Za-z0-9_.\-]+=[A-Za-z0-9_.\-~%+/=:,!#$&'*^`|?@]*"
    r"(?:; ?[A-Za-z0-9_.\-]+=[A-Za-z0-9_.\-~%+/=:,!#$&'*^`|?@]*)*",
    re.ASCII,
)

NO_COOKIES: Mapping[str, str] = MappingProxyType({})


def parse_cookie_header(header: str) -> Mapping[str, str]:
    """The cookies of one ``Cookie`` header value (read-only; the last of a name wins)."""
    if not header:
        return NO_COOKIES
    cookies: dict[str, str] = {}
    if _PLAIN.fullmatch(header):
        for pair in header.split(";"):
            name, _, value = pair.lstrip(" ").partition("=")
            cookies[name] = value
        return MappingProxyType(cookies)
    i = 0
    n = len(header)
    while i < n:
        match = _PAIR.match(header, i)
        if match is None:
            # A pair the grammar cannot read: name=value up to the next ``;``, if it has one.
            next_semi = header.find(";", i)
            eq_pos = header.find("=", i)
            if eq_pos != -1 and (next_semi == -1 or eq_pos < next_semi):
                key = header[i:eq_pos].strip()
                if _NAME.match(key):
                    value = header[eq_pos + 1 : next_semi if next_semi != -1 else n].strip()
                    cookies[key] = _unquote(value)
            i = next_semi + 1 if next_semi != -1 else n
            continue
        i = match.end(0)
        key = match.group("key")
        if _NAME.match(key):
            cookies[key] = _unquote(match.group("val") or "")
    return MappingProxyType(cookies)


def _unquote(value: str) -> str:
    """A double-quoted value without its quotes, escapes decoded (``http.cookies``' rule)."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _ESCAPE.sub(_unescape, value[1:-1])


def _unescape(match: re.Match[str]) -> str:
    return chr(int(match[1], 8)) if match[1] else match[2]
