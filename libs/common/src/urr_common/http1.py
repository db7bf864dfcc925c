"""The HTTP/1.1 connection layer shared by the gateway's own listeners (the check API's
``urr_gateway.checkserver`` and the public ``urr_gateway.publicserver``) and the VWR's API
Gateway emulator (``urr_vwr_lambda.local.apigw_server``): an ``asyncio.Protocol`` fed to
httptools. (Moved here from ``urr_gateway.http1`` unchanged, so both services share it.)

Why not aiohttp's server: on both listeners a profile put a quarter to most of the non-idle
time in aiohttp's request and response objects, its middleware chain and its writer. The
parser is ``httptools`` (llhttp, the parser Node.js ships, in C; already the upstream
client's parser, so one parser to follow for fixes). aiohttp's own C parser
(``aiohttp._http_parser``) is a private module that builds aiohttp's message objects and a
``StreamReader`` per request, which is the cost being removed.

What this layer does for every listener built on it: answers written in request order
(``Answer`` slots in a queue; a listener fills them when it can), a head bounded in bytes
(``max_head_bytes``, counted whatever the slicing of the reads) and in fields
(``max_headers``), a request that must arrive within ``request_timeout_s`` of its first byte
(408), an idle connection closed after ``keepalive_timeout_s``, malformed HTTP refused (400),
and every such refusal a problem+json answer after which the connection is closed by half
and drained for ``LINGER_S`` (so the client reads the answer instead of a reset). Reading
pauses while the client does not read our answers (``pause_writing``) and whenever the
listener asks (``pause_reading``/``resume_reading`` with its own reasons in ``may_resume``).
``Http1Server`` owns the connections: one sweep a second checks deadlines and renews the
``Date`` header; ``close`` stops listening, lets answers owed be written, then cuts the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from random import getrandbits
from typing import Any, Generic, TypeVar, cast

import httptools
import orjson
from mypy_extensions import mypyc_attr

from urr_common.problems import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    Problem,
    ProblemError,
)

#: Request line and header fields together.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
#: From a request's first byte to its last (a slow client holds nothing longer).
REQUEST_TIMEOUT_S = 10.0
#: How long a connection closed by half after a refusal is read and dropped from.
LINGER_S = 2.0
#: aiohttp's default keep-alive timeout.
KEEPALIVE_TIMEOUT_S = 75.0
#: How often deadlines are checked and the Date header renewed.
SWEEP_S = 1.0

#: A client's ``X-Request-Id`` kept as the request's id (``new_request_id``'s rule).
REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
CLOSE_LINE = b"Connection: close\r\n"
_PROBLEM_TYPE = f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n".encode()
UPGRADE_REFUSED = BadRequest("protocol upgrades are not served here")


def status_line(status: int, reason: str | None = None) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (the standard phrase when none is given)."""
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1", "replace")


_STATUS_LINES = {
    status: status_line(status)
    for status in (400, 401, 403, 404, 405, 408, 413, 415, 422, 429, 431, 500, 502, 503, 504)
}


class Refused(ProblemError):
    """A problem with any status (the connection layer's own refusals: 408, 431)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        super().__init__(detail, code=code)


class Unreadable(Exception):
    """Raised where the request cannot be read on: ``problem`` is answered, then the
    connection closes."""

    def __init__(self, problem: ProblemError) -> None:
        super().__init__(problem.code)
        self.problem = problem


class Internal(ProblemError):
    """The answer to a request a listener failed on (logged where it failed)."""

    status = 500

    def __init__(self) -> None:
        super().__init__(
            "The server failed to handle this request; it has been logged.",
            code="internal_error",
            title="Internal Server Error",
        )


HEAD_TOO_LARGE = Refused(431, "headers_too_large", "the request head is too large")
REQUEST_TIMEOUT = Refused(408, "request_timeout", "the request was not received in time")


def problem_of(exc: ProblemError, path: str) -> tuple[int, bytes, bytes]:
    """Status, JSON body and extra header lines of the problem answer to ``exc``."""
    problem: Problem = exc.to_problem(instance=path or None)
    extra = b"".join(
        f"{name}: {value}\r\n".encode("latin-1", "replace") for name, value in exc.headers.items()
    )
    return problem.status, orjson.dumps(problem.to_dict()), extra


class Answer:
    """One request's place in its connection's answer order."""

    __slots__ = ("close", "data", "linger")

    def __init__(self) -> None:
        #: The bytes to write once every answer before it is out (``None``: not ready).
        self.data: bytes | None = None
        self.close = False
        #: Close by half: the client may still be sending what will not be read, and a close
        #: with unread bytes resets the connection before it reads this answer.
        self.linger = False


S = TypeVar("S", bound="Http1Server")


# Compiled (urr_common.native), the classes stay open to the interpreted listeners that
# subclass them (the check API, the API Gateway emulator).
@mypyc_attr(allow_interpreted_subclasses=True)
class Http1Connection(asyncio.Protocol, Generic[S]):
    """One client connection. A listener subclasses it and implements the message callbacks
    after the head (``on_headers_complete``, ``on_body``, ``on_message_complete``) and
    ``header``; it calls ``begin_answer``/``flush`` to answer in order."""

    #: Limits of the head (a listener may set its own).
    max_head_bytes = MAX_HEAD_BYTES
    max_headers = MAX_HEADERS

    __slots__ = (
        "_answers",
        "_fields",
        "_head_bytes",
        "_in_head",
        "_in_message",
        "_inbound_id",
        "_reading_paused",
        "_stopped",
        "_unreadable",
        "_url",
        "_write_paused",
        "deadline",
        "parser",
        "server",
        "transport",
    )

    def __init__(self, server: S) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self._answers: deque[Answer] = deque()
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0
        self._fields = 0
        self._url = b""
        self._inbound_id: bytes | None = None
        #: What a parser callback refused the request with (``unreadable``).
        self._unreadable: ProblemError | None = None
        #: No more requests are read: the connection closes once its answers are written.
        self._stopped = False
        #: Named like aiohttp's handler's flag: the shedding wrapper reads it before resuming.
        self._reading_paused = False
        self._write_paused = False
        #: ``loop.time()`` by which the client must have sent something; ``None``: waiting on us.
        self.deadline: float | None = None

    # --- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only duck-typed ones.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.deadline = self.server.loop.time() + self.server.keepalive_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        self.transport = None
        self._stopped = True

    def pause_writing(self) -> None:
        self._write_paused = True
        self.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            max_head_bytes = self.max_head_bytes
            if len(data) <= max_head_bytes // 4:
                # ``_feed`` inlined for one slice (every read of a plain request; keep in step).
                self.parser.feed_data(data)
                if self._in_head:
                    self._head_bytes += len(data)
                    if self._head_bytes > max_head_bytes:
                        raise self.unreadable(HEAD_TOO_LARGE)
            else:
                slice_bytes = max_head_bytes // 4
                view = memoryview(data)
                for at in range(0, len(data), slice_bytes):
                    self._feed(view[at : at + slice_bytes])
        except Unreadable as refused:
            self.refuse_and_close(refused.problem)
        except httptools.HttpParserUpgrade:
            self.upgraded()
        except httptools.HttpParserError as malformed:
            # (Two names: compiled, one name keeps one type for the whole function.)
            self.refuse_and_close(
                self._unreadable or BadRequest(f"malformed HTTP request: {malformed}")
            )

    def unreadable(self, problem: ProblemError) -> Unreadable:
        """What a parser callback raises to refuse the request. The connection keeps the
        problem too: httptools hands a callback's exception back only as its own error's
        ``__context__``, which Python replaces when the error is raised while another
        exception is being handled (compiled callers can leave one set)."""
        self._unreadable = problem
        return Unreadable(problem)

    def _feed(self, data: bytes | memoryview) -> None:
        """Parse ``data``; a head still unfinished after it counts it whole. httptools keeps
        an unfinished header line to itself, so this is what bounds a head that never ends:
        fed in slices, a head is refused beyond ``max_head_bytes`` + one slice and never
        below ``max_head_bytes`` - one slice, however many pipelined requests share a read."""
        if self._stopped:  # a refusal in an earlier slice
            return
        self.parser.feed_data(data)
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                raise self.unreadable(HEAD_TOO_LARGE)

    def upgraded(self) -> None:
        """llhttp stopped at an upgrade request (already completed): nothing after it is
        read. A listener that refused it in ``on_headers_complete`` has its answer queued."""
        self._stopped = True
        if self._in_message:
            self.refuse_and_close(UPGRADE_REFUSED)

    # --- httptools callbacks common to every listener --------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._head_bytes = 0
        self._fields = 0
        self._url = b""
        self._inbound_id = None
        self.deadline = self.server.loop.time() + self.server.request_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Both listeners override this whole (``checkserver``, ``publicserver``): changes
        # belong there too.
        self._fields += 1
        if self._fields > self.max_headers:
            raise self.unreadable(HEAD_TOO_LARGE)
        if self._inbound_id is None and len(name) == 12 and name.lower() == b"x-request-id":
            self._inbound_id = value
        self.header(name, value)

    def header(self, name: bytes, value: bytes) -> None:
        """One header field of the request being read (the listener keeps what it needs)."""

    def head_done(self) -> None:
        """Called by the listener's ``on_headers_complete``: the head's deadline is met."""
        self._in_head = False

    # --- answering in order ----------------------------------------------------------------

    def path(self) -> str:
        return self._url.partition(b"?")[0].decode("latin-1")

    def request_id(self) -> bytes:
        """The client's ``X-Request-Id`` when it is short and plain, else a fresh one."""
        inbound = self._inbound_id
        if inbound is not None and REQUEST_ID_RE.fullmatch(inbound):
            return inbound
        # 128 bits from the process's Mersenne Twister (reseeded in each forked worker): a
        # request id must be unique, not secret, and os.urandom's getrandom syscall was 9 %
        # of the check listener's samples under load.
        return b"%032x" % getrandbits(128)

    def begin_answer(self, *, close: bool) -> Answer:
        """A slot in the answer order for the request just read."""
        answer = Answer()
        answer.close = close
        if close:  # nothing after it is read (llhttp refuses it too)
            self._stopped = True
        self._answers.append(answer)
        return answer

    def problem_bytes(
        self, exc: ProblemError, request_id: bytes, path: str, *, head: bool, close: bool
    ) -> bytes:
        """A whole problem+json answer (``head``: without its body)."""
        status, body, extra = problem_of(exc, path)
        return b"%s%sX-Request-Id: %s\r\nDate: %s\r\n%sContent-Length: %d\r\n%s\r\n%s" % (
            _STATUS_LINES.get(status) or status_line(status),
            _PROBLEM_TYPE,
            request_id,
            self.server.date,
            extra,
            len(body),
            CLOSE_LINE if close else b"",
            b"" if head else body,
        )

    def answer_problem(
        self, answer: Answer, exc: ProblemError, request_id: bytes, path: str, head: bool
    ) -> None:
        answer.data = self.problem_bytes(exc, request_id, path, head=head, close=answer.close)
        self.flush()

    def refuse_and_close(self, problem: ProblemError) -> None:
        """Answer a request that cannot be read on (after the answers owed), then close."""
        self._stopped = True
        self._in_head = self._in_message = False
        self.deadline = None
        answer = Answer()
        answer.close = answer.linger = True
        self._answers.append(answer)
        self.stopped_reading()
        self.answer_problem(answer, problem, self.request_id(), self.path(), False)

    def stopped_reading(self) -> None:
        """Nothing more is read from the client (a listener ends a body in progress)."""

    def flush(self) -> None:
        """Write every answer that is ready and next in order, in one write."""
        answers = self._answers
        if not answers or answers[0].data is None:
            return
        ready: list[bytes] = []
        last = None
        while answers:
            # Through ``head``: mypy narrows ``answers[0].data`` to ``bytes`` after the test
            # above, and compiled, that type is checked (``None`` would be a TypeError).
            head = answers[0]
            data = head.data
            if data is None:
                break
            ready.append(data)
            last = answers.popleft()
            if last.close:
                self._stopped = True
                answers.clear()
                break
        transport = self.transport
        if transport is None:
            return
        out = ready[0] if len(ready) == 1 else b"".join(ready)
        if out:
            transport.write(out)
        if last is not None and last.linger:
            self.linger()
            return
        if (last is not None and last.close) or (
            self._stopped and not answers and not self._in_message
        ):
            transport.close()
            return
        if not answers and not self._in_message:
            self.deadline = self.server.loop.time() + self.server.keepalive_timeout_s
        if self._reading_paused:  # ``resume_reading``'s first test: no call when reading
            self.resume_reading()

    def linger(self) -> None:
        """Close by half and drop what still comes until the client closes (or ``LINGER_S``)."""
        transport = self.transport
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self._stopped = True
        transport.write_eof()
        if self._reading_paused:  # to drop what still comes until the client closes
            transport.resume_reading()
        self._reading_paused = self._write_paused = False
        self.deadline = self.server.loop.time() + LINGER_S

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if (
            self._reading_paused
            and not self._write_paused
            and self.transport is not None
            and self.may_resume()
        ):
            self._reading_paused = False
            self.transport.resume_reading()

    def may_resume(self) -> bool:
        """The listener's own reasons to keep reading paused (none by default)."""
        return True

    # --- the server's sweep and shutdown --------------------------------------------------

    def expire(self) -> None:
        """The client missed its deadline: a request begun is a 408, an idle connection (or
        one lingering) closes."""
        if self._in_message and not self._stopped:
            self.refuse_and_close(REQUEST_TIMEOUT)
        elif self.transport is not None and (not self._answers or self._stopped):
            self.transport.close()

    def shut_down(self) -> None:
        """Read no more; close once the answers owed are written (at once when idle)."""
        self._stopped = True
        self.deadline = None
        if not self._answers and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@mypyc_attr(allow_interpreted_subclasses=True)
class Http1Server:
    """A listener: its connections, their deadlines (one sweep a second, not a timer per
    request), the Date header, and a drain that lets answers owed be written."""

    def __init__(
        self,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        self.request_timeout_s = request_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.connections: set[Http1Connection[Any]] = set()
        self.date_text = formatdate(usegmt=True)
        self.date = self.date_text.encode()
        self._listener: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        #: Set while closing, once the last connection is gone.
        self._drained: asyncio.Event | None = None
        self.loop = asyncio.get_running_loop()

    def connection(self) -> asyncio.Protocol:
        """A new connection's protocol (the listener's ``Http1Connection`` subclass)."""
        raise NotImplementedError

    async def start(
        self,
        host: str | None,
        port: int,
        *,
        reuse_port: bool | None = None,
        wrap: Callable[[Callable[[], asyncio.Protocol]], Callable[[], asyncio.Protocol]]
        | None = None,
    ) -> int:
        """Listen on ``host:port``; the port bound. ``wrap``: wraps the protocol factory (the
        public listener's per-address shedding)."""
        factory: Callable[[], asyncio.Protocol] = self.connection
        if wrap is not None:
            factory = wrap(factory)
        self._listener = await self.loop.create_server(
            factory, host, port, reuse_port=reuse_port, backlog=1024
        )
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)
        # ``Any``: uvloop's ``sockets`` is a list, typeshed says a tuple, and mypyc checks it.
        listener: Any = self._listener
        bound: int = listener.sockets[0].getsockname()[1]
        return bound

    def forget(self, connection: Http1Connection[Any]) -> None:
        self.connections.discard(connection)
        if self._drained is not None and not self.connections:
            self._drained.set()

    def _sweep(self) -> None:
        self.date_text = formatdate(usegmt=True)
        self.date = self.date_text.encode()
        now = self.loop.time()
        for connection in list(self.connections):
            if connection.deadline is not None and now > connection.deadline:
                connection.expire()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    async def close(self, timeout_s: float) -> None:
        """Stop listening, let in-flight answers be written for up to ``timeout_s``, then
        cut what is left."""
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.shut_down()
        if self.connections:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        for connection in list(self.connections):
            connection.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._listener is not None:
            await self._listener.wait_closed()


# Last: ``http1site`` imports this module's names (mypyc cannot compile a class on
# ``BaseSite``, which has ``__slots__``; that module is never compiled).
from urr_common.http1site import Http1Site as Http1Site  # noqa: E402
