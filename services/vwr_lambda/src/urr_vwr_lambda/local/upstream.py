"""The edge stand-in's upstream HTTP/1.1 client: kept-alive connections, llhttp parser.

In a flash crowd the edge proxied every request with aiohttp's ``ClientSession``, which cost
37 % of the edge's CPU (issue 22 item 3, ``docs/performance.md``): a request object, a
response object, a stream reader, a timer and several tasks and futures per request. Every
answer behind the edge is small (JSON, a page), so this client does what the edge needs and
nothing else: one write of the whole request, the answer parsed by ``httptools`` (llhttp, in
C) as it arrives and handed over once complete (status, reason, raw header pairs, body), one
future per request. It is the edge's own, not the gateway's ``urr_gateway.upstream``: that
one streams bodies both ways with backpressure and deadlines per silence, and lives in a
package the Tier-1 Lambdas must not depend on.

Kept of aiohttp's behaviour: at most ``limit`` connections per upstream (callers wait for
one), idle connections closed after ``idle_timeout_s``, the whole exchange bounded by
``timeout_s``, and a request without a body sent again once on a fresh connection when a
kept-alive one turns out to have been closed by the upstream before any byte of the answer
(the race of every keep-alive client with the upstream's idle timer).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

#: Request headers the client writes itself.
_CLIENT_OWNED = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamFailed(Exception):
    """The upstream could not be reached, closed the connection or sent a bad answer."""


class StaleConnection(UpstreamFailed):
    """A kept-alive connection was closed before any byte of the answer arrived."""


@dataclass(slots=True)
class Answer:
    status: int = 0
    reason: str = ""
    #: Header pairs as sent (names and values decoded as latin-1).
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.served = 0
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Answer] | None = None
        self._answer = Answer()
        self._body: list[bytes] = []
        self._received = False
        self._head = False
        self._framed = False  # Content-Length or chunked: the answer does not end at close
        self.reusable = False

    def send(self, request: bytes, waiter: asyncio.Future[Answer], *, head: bool) -> None:
        if self.closed or self.transport is None:
            raise StaleConnection("the connection is closed")
        if head or self._head:
            # llhttp cannot be told that a HEAD answer has no body: a fresh parser each time.
            self._parser = httptools.HttpResponseParser(self)
        self._head = head
        self._waiter = waiter
        self._answer = Answer()
        self._body = []
        self._received = False
        self._framed = False
        self.reusable = False
        self.transport.write(request)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if answer.status >= 200 and not self._framed and not self._head:
            self._settle()  # an answer framed by the close itself is complete now
        elif not self._received and self.served:
            self._fail(StaleConnection("the upstream had closed the kept-alive connection"))
        else:
            self._fail(UpstreamFailed("the upstream closed the connection"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamFailed(f"bad answer from the upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None

    # --- httptools callbacks ------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._answer.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._answer.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100, 103): wait for the real one
            self._answer = Answer()
            return
        answer = self._answer
        answer.status = status
        for name, value in answer.headers:
            lowered = name.lower()
            if lowered == "content-length" or (
                lowered == "transfer-encoding" and "chunked" in value.lower()
            ):
                self._framed = True
        if self._head:
            self.reusable = False  # the fresh parser of a HEAD is not trusted any further
            self._settle()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._answer.status < 200 or self._head:
            return
        self.reusable = self._parser.should_keep_alive()
        self._settle()

    def _settle(self) -> None:
        waiter, self._waiter = self._waiter, None
        self.served += 1
        if waiter is not None and not waiter.done():
            self._answer.body = b"".join(self._body)
            waiter.set_result(self._answer)

    def _fail(self, error: UpstreamFailed) -> None:
        waiter, self._waiter = self._waiter, None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class Upstream:
    """Kept-alive connections to one ``http://host[:port]`` upstream."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        limit: int = 100,
        idle_timeout_s: float = 15.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the edge's upstream must be http://host[:port], not {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_header = parts.netloc
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._slots = asyncio.Semaphore(limit)
        self._idle: deque[_Connection] = deque()

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        """Send one request (the whole body in one write); its complete answer."""
        kept = [(name, value) for name, value in headers if name.lower() not in _CLIENT_OWNED]
        plain = "".join([method, target, *(name + value for name, value in kept)])
        if "\n" in plain or "\r" in plain:  # one would split a line of the request
            raise ValueError("a header name or value contains CR or LF")
        fields = [f"{name}: {value}\r\n" for name, value in kept]
        framing = f"Content-Length: {len(body)}\r\n" if body or method in _BODY_METHODS else ""
        head = f"{method} {target} HTTP/1.1\r\nHost: {self.host_header}\r\n{''.join(fields)}"
        request = (head + framing + "\r\n").encode("latin-1", "surrogateescape") + body
        retryable = not body and method in _IDEMPOTENT
        async with self._slots, asyncio.timeout(self.timeout_s):
            while True:
                connection = self._take_idle() or await self._connect()
                try:
                    return await self._exchange(connection, request, method == "HEAD")
                except StaleConnection:
                    if not retryable:
                        raise
                    retryable = False  # once: the next connection is a fresh one

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _take_idle(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < self.idle_timeout_s:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise UpstreamFailed(f"cannot connect: {exc}") from exc
        return connection

    async def _exchange(self, connection: _Connection, request: bytes, head: bool) -> Answer:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        try:
            connection.send(request, waiter, head=head)
            answer = await waiter
        except BaseException:
            connection.close()
            raise
        if connection.reusable and not connection.closed:
            connection.idle_since = loop.time()
            self._idle.append(connection)
        else:
            connection.close()
        return answer
