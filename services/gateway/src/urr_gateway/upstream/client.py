"""The proxy's HTTP/1.1 client: one bounded keep-alive pool per upstream.

``send`` writes the request head (framing chosen here: ``Content-Length`` when the length
is known, else chunked), streams the body with backpressure, and returns the answer once its
headers are in. Deadlines: connect (in the pool), pool wait (``PoolTimeout``), answer headers
and each silence in the answer body (``read_timeout_s``: ``UpstreamTimeout``). The client's
own body pace is the body source's business (the proxy applies its deadlines there).

A request without a body and with an idempotent method is sent again, on another
connection, when a kept-alive connection turns out to have been closed by the upstream
before any byte of the answer came back: the race every keep-alive client loses now and
then when the upstream's idle timer fires just as a request goes out.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from multidict import CIMultiDict, istr

from urr_gateway.upstream.connection import UpstreamConnection, UpstreamResponse
from urr_gateway.upstream.errors import RequestBodyError, UpstreamError, UpstreamProtocolError
from urr_gateway.upstream.pool import ConnectionPool

_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Request headers the client writes itself (framing, the upstream's Host).
_CLIENT_OWNED = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# The same as ``istr``s: a case-insensitive multidict folds a plain string's case on every
# lookup, an ``istr``'s once.
_HOST = istr("host")
_CONTENT_LENGTH = istr("content-length")
_TRANSFER_ENCODING = istr("transfer-encoding")
_CONNECTION = istr("connection")
#: Methods that carry a body by definition: an empty one is announced as such.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
#: One header field's ``name: value`` (``str.join`` bound, called by ``map`` from C).
_FIELD_JOIN = ": ".join
#: Attempts on a reused connection that the upstream had closed (bounded).
_MAX_ATTEMPTS = 3


class InvalidHeader(ValueError):
    """A header name or value would break the request framing (CR or LF in it)."""


@dataclass(frozen=True, slots=True)
class PoolLimits:
    limit: int
    connect_timeout_s: float
    pool_timeout_s: float
    read_timeout_s: float
    idle_timeout_s: float


@dataclass(slots=True)
class _Origin:
    pool: ConnectionPool
    host_header: str
    read_timeout_s: float


class UpstreamClient:
    def __init__(self, base_urls: Mapping[str, str], limits: PoolLimits) -> None:
        """``base_urls``: upstream name -> ``http(s)://host[:port]`` (a path is ignored)."""
        self._origins: dict[str, _Origin] = {}
        for name, base in base_urls.items():
            parts = urlsplit(base)
            if parts.hostname is None:
                raise ValueError(f"upstream {name}: {base!r} has no host")
            tls = ssl.create_default_context() if parts.scheme == "https" else None
            port = parts.port or (443 if tls is not None else 80)
            pool = ConnectionPool(
                parts.hostname,
                port,
                limit=limits.limit,
                connect_timeout_s=limits.connect_timeout_s,
                pool_timeout_s=limits.pool_timeout_s,
                idle_timeout_s=limits.idle_timeout_s,
                tls=tls,
            )
            self._origins[name] = _Origin(pool, parts.netloc, limits.read_timeout_s)

    def pool(self, name: str) -> ConnectionPool:
        return self._origins[name].pool

    async def close(self) -> None:
        for origin in self._origins.values():
            await origin.pool.close()

    async def send(
        self,
        upstream: str,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | None = None,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request; the answer with its headers in (read its body, then ``close``)."""
        origin = self._origins[upstream]
        framing = _framing(method, body is not None, content_length)
        head = request_head(method, target, origin.host_header, headers, framing)
        retryable = body is None and method in _IDEMPOTENT
        pool = origin.pool
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            # A warm idle connection is the common case: taken without a coroutine.
            connection = pool.take_idle() or await pool.acquire()
            reused = connection.served > 0
            response: UpstreamResponse | None = None
            try:
                response = connection.start(
                    head,
                    head_request=method == "HEAD",
                    timeout_s=origin.read_timeout_s,
                    on_done=_give_back,
                )
                if body is not None:
                    await _send_body(connection, body, chunked=content_length is None)
                connection.request_sent()
                if not response.headers_done:
                    # Awaited here rather than through ``wait_headers``: each coroutine
                    # level between the server and this future is resumed once per answer.
                    await response.progress()
                    if not response.headers_done:  # an interim answer's progress: rare
                        await response.wait_headers()
                return response
            except RequestBodyError:
                connection.abandon()
                raise
            except UpstreamError as exc:
                connection.abandon()
                if body is not None and response is not None and response.headers_done:
                    # The upstream answered before taking the whole body (a 413, a 401) and
                    # closed the connection: its answer is what the client should get.
                    return response
                stale = isinstance(exc, UpstreamProtocolError) and not connection.answered
                if not (retryable and reused and stale and attempt < _MAX_ATTEMPTS):
                    raise
            except BaseException:
                if response is not None:
                    response.close()  # forgets its read deadline (a cancelled wait)
                connection.abandon()
                raise
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover


def _framing(method: str, has_body: bool, content_length: int | None) -> str:
    """The framing header line of a request (empty: a bodiless method without a body)."""
    if not has_body:
        return "Content-Length: 0\r\n" if method in _BODY_METHODS else ""
    if content_length is not None:
        return f"Content-Length: {content_length}\r\n"
    return "Transfer-Encoding: chunked\r\n"


def _give_back(connection: UpstreamConnection, reusable: bool) -> None:
    connection.pool.release(connection, reusable)


async def _send_body(
    connection: UpstreamConnection, body: AsyncIterator[bytes], *, chunked: bool
) -> None:
    while True:
        try:
            chunk = await anext(body, b"")
        except Exception as exc:
            raise RequestBodyError(exc) from exc
        if not chunk:
            break
        if chunked:
            connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        else:
            connection.write(chunk)
        await connection.drain()
    if chunked:
        connection.write(b"0\r\n\r\n")


def request_head(
    method: str, target: str, host: str, headers: CIMultiDict[str], framing: str
) -> bytes:
    """The request line and headers, with ``framing`` (``Content-Length``/chunked) added."""
    # Joined, not formatted: the names are ``istr``s, which f-strings format the slow way;
    # each field joined by ``map`` from C (no Python loop).
    if (  # ``_CLIENT_OWNED``, spelt out: four lookups in C (``istr``s), no generator
        _HOST in headers
        or _CONTENT_LENGTH in headers
        or _TRANSFER_ENCODING in headers
        or _CONNECTION in headers
    ):
        fields = [
            ": ".join(field) for field in headers.items() if field[0].lower() not in _CLIENT_OWNED
        ]
    else:  # the proxy's usual case (it drops them already): no lower-casing of every name
        fields = list(map(_FIELD_JOIN, headers.items()))
    # Every piece the client, a filter or a setting supplied, run together: one CR or LF in
    # any of them would split a line. ``in`` finds a character with memchr; ``str.count``
    # (the earlier check, on the whole head) walks it character by character, twice, which
    # cost more than building the head.
    fields.extend((method, target, host))
    plain = "".join(fields)
    if "\n" in plain or "\r" in plain:
        raise InvalidHeader("a header name or value contains CR or LF")
    # The head in one join (the request line first, the framing and the blank line last):
    # one copy of the ~1.5 KB of fields, where a join and two concatenations made three.
    fields[-3:] = (framing, "")
    fields.insert(0, f"{method} {target} HTTP/1.1\r\nHost: {host}")
    return "\r\n".join(fields).encode("utf-8", "surrogateescape")
