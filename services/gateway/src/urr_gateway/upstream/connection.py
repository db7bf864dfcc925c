"""One keep-alive HTTP/1.1 connection to an upstream: an asyncio protocol fed to llhttp.

The parser is ``httptools`` (llhttp, the parser Node.js ships, in C): its callbacks hand
over the status, each header and each body piece as they are parsed, so a small answer that
arrives in one segment is complete before the proxy looks at it, with no stream object, no
task and no future in between. aiohttp's own C parser would do too, but it is a private
module (``aiohttp._http_parser``) whose signature changes between releases and it feeds an
aiohttp ``StreamReader`` per message, which is the cost this client exists to avoid.

Backpressure both ways: writes wait in ``drain`` while the transport has paused writing;
reads pause the transport once the unread body passes ``_HIGH_WATER`` and resume when the
reader has taken it below ``_LOW_WATER``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools
from multidict import CIMultiDict, istr

from urr_gateway.upstream.errors import UpstreamProtocolError, UpstreamTimeout

if TYPE_CHECKING:
    from urr_gateway.upstream.pool import ConnectionPool

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
#: Statuses whose answers never have a body (RFC 9112 §6.3).
_NO_BODY = frozenset({204, 304})
_CONTENT_LENGTH = istr("Content-Length")
#: The most bytes of an answer (its head, and whatever of its body came with it) received
#: before its head was complete for the head to be kept for the next answer's.
_KEPT_HEAD_BYTES = 8 * 1024


class UpstreamResponse:
    """An answer being received: headers once parsed, then the body piece by piece."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_connection",
        "_done",
        "_error",
        "_timeout_s",
        "_waiter",
        "content_length",
        "deadline",
        "headers",
        "headers_done",
        "reason",
        "status",
    )

    def __init__(self, connection: UpstreamConnection, timeout_s: float) -> None:
        self._connection = connection
        self._timeout_s = timeout_s
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.content_length: int | None = None
        self.headers_done = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: Loop time the current wait fails at (kept by ``ReadDeadlines``).
        self.deadline = 0.0

    @property
    def complete(self) -> bool:
        """The whole body has been received (it may not have been read yet)."""
        return self._done

    async def wait_headers(self) -> None:
        """Until the status line and headers are in, or the read deadline passes."""
        while not self.headers_done:
            await self._wait()

    def progress(self) -> asyncio.Future[None]:
        """A future resolved at the parser's next progress (headers, a body piece, the end)
        and failed at the read deadline or the connection's loss. For a caller that awaits
        it directly instead of through ``wait_headers``/``read``: one coroutine level less
        to resume on the hot path. The deadline is forgotten when the future is settled."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._connection.loop.create_future()
        self._connection.deadlines.watch(self, self._timeout_s)
        return waiter

    async def read(self) -> bytes:
        """The whole body (for answers known to be small)."""
        while not self._done:
            await self._wait()
        return self.take_body()

    def take_body(self) -> bytes:
        """The whole body of an answer already ``complete`` (``read`` without awaiting)."""
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return body

    async def read_chunk(self) -> bytes:
        """The next body piece; ``b""`` once the body is complete."""
        while not self._chunks:
            if self._done:
                return b""
            await self._wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < _LOW_WATER:
            self._connection.resume_reading()
        return chunk

    def close(self) -> None:
        """The reader is done: an unfinished answer makes the connection unusable."""
        self._unwatch()
        if not self._done:
            self._done = True
            self._connection.abandon()
        self._chunks.clear()

    async def _wait(self) -> None:
        try:
            await self.progress()
        finally:
            self._unwatch()  # settled already, unless cancelled
        if self._error is not None:
            raise self._error

    def expire(self) -> None:
        """The read deadline passed with nothing from the upstream (``ReadDeadlines``)."""
        waiter, self._waiter = self._waiter, None  # the sweep has dropped its deadline
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamTimeout("the upstream was silent past the read deadline"))

    def _unwatch(self) -> None:
        if self._waiter is not None:
            self._waiter = None
            self._connection.deadlines.forget(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._connection.deadlines.forget(self)
            if not waiter.done():
                waiter.set_result(None)

    # Called by the connection as the parser makes progress.
    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER:
            self._connection.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._error = error
        self._done = True
        waiter = self._waiter
        if waiter is not None:
            self._unwatch()
            if not waiter.done():
                waiter.set_exception(error)


class UpstreamConnection(asyncio.Protocol):
    """The protocol of one pooled connection; the pool owns its life cycle."""

    def __init__(self, pool: ConnectionPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.deadlines = pool.read_deadlines(loop)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Answers completed on this connection (a kept-alive one may be closed under us).
        self.served = 0
        #: Loop time it went back to the pool.
        self.idle_since = 0.0
        #: Any byte of the current answer arrived (so the request reached the upstream).
        self.answered = False
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._header_pairs: list[tuple[bytes, bytes]] = []
        #: The previous answer's fields as received, decoded, and its length: an upstream
        #: sends the same head again and again (within the second of its ``Date``, for the
        #: same length), and a head whose fields are equal byte for byte is neither decoded
        #: nor parsed again (each answer still gets headers of its own).
        self._last_pairs: list[tuple[bytes, bytes]] | None = None
        self._last_fields: list[tuple[istr, str]] = []
        self._last_length: int | None = None
        #: Bytes of the current answer received so far.
        self._received = 0
        self._reason = b""
        self._head_request = False
        self._sending = False
        self._reusable = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._on_done: Callable[[UpstreamConnection, bool], None] | None = None

    # --- used by the client -------------------------------------------------------------

    def start(
        self,
        head: bytes,
        *,
        head_request: bool,
        timeout_s: float,
        on_done: Callable[[UpstreamConnection, bool], None],
    ) -> UpstreamResponse:
        """Send the request head; the answer arrives into the returned response."""
        if self.closed or self.transport is None:
            raise UpstreamProtocolError("the connection is closed")
        if head_request or self._head_request:
            # llhttp cannot be told from here that a HEAD answer has no body: a HEAD gets a
            # fresh parser, completed at its headers, and the request after it another one.
            self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self._header_pairs = []
        self._reason = b""
        self.answered = False
        self._received = 0
        self._reusable = False
        self._on_done = on_done
        response = self._response = UpstreamResponse(self, timeout_s)
        self._sending = True
        self.transport.write(head)
        return response

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise UpstreamProtocolError("the upstream closed the connection mid-request")
        self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise UpstreamProtocolError("the upstream closed the connection mid-request")
        if self._write_paused:
            waiter = self._drain_waiter = self.loop.create_future()
            await waiter

    def request_sent(self) -> None:
        """The whole request is written; a completed answer may now return the connection."""
        self._sending = False
        response = self._response
        if response is not None and response.complete:
            self._release()

    def abandon(self) -> None:
        """The answer will not be read to its end: close, and give the slot back."""
        self._reusable = False
        self.close()
        self._release()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self.transport.resume_reading()

    def _release(self) -> None:
        on_done, self._on_done = self._on_done, None
        self._response = None
        if on_done is not None:
            on_done(self, self._reusable and not self.closed)

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamProtocolError("the upstream closed the connection"))
        response = self._response
        if response is None:
            self.pool.lost(self)
            return
        if response.headers_done and _reads_until_close(response, self._head_request):
            response._finish()  # an answer framed by the close itself is complete now
        else:
            response._fail(UpstreamProtocolError("the upstream closed the connection"))
        if not self._sending:
            self._release()

    def data_received(self, data: bytes) -> None:
        response = self._response
        if response is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted
            return
        self.answered = True
        self._received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            response._fail(UpstreamProtocolError(f"bad answer from the upstream: {exc}"))
            self.abandon()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost settles the answer

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks -----------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_pairs.append((name, value))

    def on_headers_complete(self) -> None:
        response = self._response
        if response is None:
            return
        status = self._parser.get_status_code()
        if status < 200:
            self._header_pairs = []  # an interim answer (103): wait for the real one
            self._reason = b""
            return
        pairs = self._header_pairs
        if pairs == self._last_pairs:  # compared in C, byte for byte
            headers: CIMultiDict[str] = CIMultiDict(self._last_fields)
            length = self._last_length
        else:
            # Decoded in one comprehension and built by the multidict's C constructor; the
            # length found by one lookup after: no per-header branch in Python.
            name_of = _NAMES.get
            fields = [
                (name_of(name) or _name(name), value.decode("utf-8", "surrogateescape"))
                for name, value in pairs
            ]
            headers = CIMultiDict(fields)
            length_text = headers.get(_CONTENT_LENGTH)
            length = int(length_text) if length_text is not None and length_text.isdigit() else None
            # Bounded: an idle pooled connection holds no more than this of its last answer
            # (every byte of this answer received so far bounds its head).
            if self._received <= _KEPT_HEAD_BYTES:
                # A copy: a chunked answer's trailer fields are appended to ``pairs`` later.
                self._last_pairs = pairs.copy()
                self._last_fields = fields
                self._last_length = length
        response.status = status
        response.reason = self._reason.decode("latin-1")
        response.headers = headers
        response.content_length = length
        response.headers_done = True
        response._wake()
        if self._head_request:
            self._reusable = self._parser.should_keep_alive()
            self._complete(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is not None and not self._head_request:
            response._feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or not response.headers_done or self._head_request:
            return
        self._reusable = self._parser.should_keep_alive()
        self._complete(response)

    def _complete(self, response: UpstreamResponse) -> None:
        response._finish()
        self.served += 1
        if not self._sending:
            self._release()


#: Header names as ``istr``s, by their bytes: an upstream sends the same few names on every
#: answer, and a name the multidict gets as an ``istr`` is not case-folded again there (nor
#: on each later lookup of it). Bounded (emptied when full): names are the upstream's text.
_NAMES: dict[bytes, istr] = {}
_NAMES_MAX_ENTRIES = 512
_NAMES_MAX_LENGTH = 64


def _name(raw: bytes) -> istr:
    name = istr(raw.decode("latin-1"))
    if len(raw) <= _NAMES_MAX_LENGTH:
        if len(_NAMES) >= _NAMES_MAX_ENTRIES:
            _NAMES.clear()
        _NAMES[raw] = name
    return name


def _reads_until_close(response: UpstreamResponse, head_request: bool) -> bool:
    return (
        not head_request
        and response.status not in _NO_BODY
        and response.content_length is None
        and "chunked" not in response.headers.get("Transfer-Encoding", "").lower()
    )
