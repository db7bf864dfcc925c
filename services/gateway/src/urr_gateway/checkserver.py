"""The check API's own HTTP/1.1 listener: an asyncio protocol that does only what
``POST /internal/v1/ratelimit/check`` needs.

Why not aiohttp's server: a profile of the check app at 3,000-5,000 requests/s put most of
the non-idle time in aiohttp's request and response objects, its middleware chain and its
response writer, around one small decision. Here a request is parsed by ``httptools``
(llhttp, the parser Node.js ships, in C; already the gateway's upstream client parser, so
no new dependency and one parser to follow for fixes), checked in plain code, decided by
``CheckService`` (the same object the aiohttp app answers through, so the contract, the
caller check and every 4xx are the same code) and answered with precomputed header bytes.
aiohttp's own C parser (``aiohttp._http_parser.HttpRequestParser``) was not used: it builds
aiohttp's request message, header multidict and payload stream per request, which is the
cost being removed.

HTTP handled: keep-alive; pipelined requests answered in order (decided concurrently, so
they share the limiter's pipeline); ``Content-Length`` and chunked bodies up to
``MAX_BODY_BYTES``; ``Expect: 100-continue``; ``Connection: close`` and HTTP/1.0. Refused,
each with a problem+json answer that changes nothing: malformed HTTP and upgrades (400, then
the connection closes), a head over ``MAX_HEAD_BYTES`` or ``MAX_HEADERS`` fields (431,
close), a body over the limit (413, close), a request not received within
``REQUEST_TIMEOUT_S`` of its first byte (408, close), and, like the aiohttp app: no valid
service credential (401, checked before anything else), another path (404; the path is
compared as sent, without percent-decoding), another method (405), another content type
(415), bad JSON (400), invalid fields (422). A connection idle for ``KEEPALIVE_TIMEOUT_S``
is closed; one whose client stops reading answers stops being read after ``MAX_PIPELINED``
unanswered requests (TCP backpressure does the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from random import getrandbits
from typing import cast

import httptools
import orjson
from aiohttp import web
from aiohttp.web_runner import BaseSite

from urr_common.logs import get_logger, start_request_context
from urr_common.payloads import json_object
from urr_common.problems import (
    PROBLEM_CONTENT_TYPE,
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Problem,
    ProblemError,
    UnsupportedMediaType,
)
from urr_common.upstream_security import service_credential_refusal
from urr_gateway.checkapi import CHECK_PATH, MAX_BODY_BYTES, CheckService

_LOG = get_logger(__name__)

#: Request line and header fields together; a check request's head is a few hundred bytes.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
#: From a request's first byte to its last (a slow client holds nothing longer).
REQUEST_TIMEOUT_S = 10.0
#: A body over the limit is read and dropped up to this size (so its 413 is read by a client
#: still sending); a larger one is answered at once and the connection closed.
MAX_DISCARD_BYTES = 64 * 1024
#: How long a connection closed by half after a refusal is read and dropped from.
LINGER_S = 2.0
#: aiohttp's default keep-alive timeout.
KEEPALIVE_TIMEOUT_S = 75.0
#: Unanswered requests per connection before it stops being read.
MAX_PIPELINED = 64
#: How often deadlines are checked and the Date header renewed.
SWEEP_S = 1.0

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: "
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CLOSE = b"Connection: close\r\n"
_STATUS_LINES = {
    status: f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()
    for status in (400, 401, 404, 405, 408, 413, 415, 422, 431, 500)
}
_PROBLEM_TYPE = f"Content-Type: {PROBLEM_CONTENT_TYPE}\r\n".encode()
_WANTED = frozenset(
    {b"authorization", b"content-type", b"content-length", b"x-request-id", b"expect"}
)


class _Refused(ProblemError):
    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        super().__init__(detail, code=code)


class _Unreadable(Exception):
    """Raised where the request cannot be read on: ``problem`` is answered, then the
    connection closes."""

    def __init__(self, problem: ProblemError) -> None:
        super().__init__(problem.code)
        self.problem = problem


_HEAD_TOO_LARGE = _Refused(431, "headers_too_large", "the request head is too large")


_UPGRADE = BadRequest("protocol upgrades are not served here")
_SLICE_BYTES = MAX_HEAD_BYTES // 4
_BODY_TOO_LARGE = PayloadTooLarge(
    f"the body is larger than {MAX_BODY_BYTES} bytes", code="payload_too_large"
)


def problem_of(exc: ProblemError, path: str) -> tuple[int, bytes, bytes]:
    """Status, JSON body and extra header lines of the problem answer to ``exc``."""
    problem: Problem = exc.to_problem(instance=path or None)
    extra = b"".join(
        f"{name}: {value}\r\n".encode("latin-1", "replace") for name, value in exc.headers.items()
    )
    return problem.status, orjson.dumps(problem.to_dict()), extra


class _Answer:
    """One request's place in its connection's answer order."""

    __slots__ = ("close", "data", "linger")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.close = False
        #: Close by half: the client may still be sending what will not be read, and a close
        #: with unread bytes resets the connection before it reads this answer.
        self.linger = False


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_answers",
        "_body",
        "_body_len",
        "_fields",
        "_head_bytes",
        "_headers",
        "_in_head",
        "_in_message",
        "_parser",
        "_paused",
        "_refusal",
        "_server",
        "_stopped",
        "_tasks",
        "_transport",
        "_url",
        "_write_paused",
        "deadline",
    )

    def __init__(self, server: CheckServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._answers: deque[_Answer] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_message = False
        self._in_head = False
        self._head_bytes = 0
        self._fields = 0
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        #: A problem found before the body was read (credential, path, method, type).
        self._refusal: ProblemError | None = None
        #: No more requests are read: the connection closes once its answers are written.
        self._stopped = False
        self._paused = False
        self._write_paused = False
        #: ``loop.time()`` by which the client must have sent something; ``None``: waiting on us.
        self.deadline: float | None = None

    # --- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        self.deadline = self._server.loop.time() + self._server.keepalive_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget(self)
        self._transport = None
        self._stopped = True
        # Tasks are left to finish (a decision sent to Redis counts either way); their answers
        # are dropped.

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        try:
            if len(data) <= _SLICE_BYTES:
                self._feed(data)
            else:
                view = memoryview(data)
                for at in range(0, len(data), _SLICE_BYTES):
                    self._feed(view[at : at + _SLICE_BYTES])
        except _Unreadable as exc:
            self._refuse_and_close(exc.problem)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself was answered (400) and closes the connection.
            self._stopped = True
            if self._in_message:
                self._refuse_and_close(_UPGRADE)
        except httptools.HttpParserError as exc:
            # A callback's exception reaches here as the parser error's context.
            if isinstance(exc.__context__, _Unreadable):
                self._refuse_and_close(exc.__context__.problem)
            else:
                self._refuse_and_close(BadRequest(f"malformed HTTP request: {exc}"))

    def _feed(self, data: bytes | memoryview) -> None:
        """Parse ``data``; a head still unfinished after it counts it whole. httptools keeps
        an unfinished header line to itself, so this is what bounds a head that never ends:
        fed in slices, a head is refused beyond MAX_HEAD_BYTES + one slice and never below
        MAX_HEAD_BYTES - one slice, however many pipelined requests share a read."""
        if self._stopped:  # a refusal in an earlier slice
            return
        self._parser.feed_data(data)
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                raise _Unreadable(_HEAD_TOO_LARGE)

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._head_bytes = 0
        self._fields = 0
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_len = 0
        self._refusal = None
        self.deadline = self._server.loop.time() + self._server.request_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADERS:
            raise _Unreadable(_HEAD_TOO_LARGE)
        name = name.lower()
        # The first of repeated fields counts, as aiohttp's ``headers.get`` reads them.
        if name in _WANTED and name not in self._headers:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        if parser.should_upgrade():  # answered, then feed_data raises HttpParserUpgrade
            self._refusal = _UPGRADE
            return
        self._refusal = self._refusal_before_body(parser.get_method())
        length = self._headers.get(b"content-length")
        if length is not None and int(length) > MAX_BODY_BYTES:
            if int(length) > MAX_DISCARD_BYTES:
                raise _Unreadable(self._refusal or _BODY_TOO_LARGE)
            self._refusal = self._refusal or _BODY_TOO_LARGE
        if (
            self._refusal is None
            and self._headers.get(b"expect", b"").lower() == b"100-continue"
            and not self._answers
        ):
            self._transport.write(_CONTINUE)  # type: ignore[union-attr]  # called while connected

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._refusal is None and self._body_len <= MAX_BODY_BYTES:
            self._body.append(body)
        elif self._body_len > MAX_DISCARD_BYTES:
            raise _Unreadable(self._refusal or _BODY_TOO_LARGE)
        else:  # read on and drop, so the connection stays in step and the answer is read
            self._refusal = self._refusal or _BODY_TOO_LARGE
            self._body.clear()

    def on_message_complete(self) -> None:
        self._in_message = False
        self.deadline = None
        answer = _Answer()
        answer.close = not self._parser.should_keep_alive()
        if self._refusal is _UPGRADE:
            answer.close = answer.linger = True
        if answer.close:  # nothing after it is read (llhttp refuses it too)
            self._stopped = True
        self._answers.append(answer)
        head_only = self._parser.get_method() == b"HEAD"
        request_id = self._request_id()
        if self._refusal is not None:
            self._problem(answer, self._refusal, request_id, self._path(), head_only)
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            task = self._server.loop.create_task(self._answer(answer, body, request_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if len(self._answers) >= MAX_PIPELINED:
                self._pause_reading()

    # --- answering -------------------------------------------------------------------------

    def _path(self) -> str:
        return self._url.partition(b"?")[0].decode("latin-1")

    def _request_id(self) -> bytes:
        inbound = self._headers.get(b"x-request-id")
        if inbound is not None and _REQUEST_ID_RE.fullmatch(inbound):
            return inbound
        # 128 bits from the process's Mersenne Twister (reseeded in each forked worker): a
        # request id must be unique, not secret, and os.urandom's getrandom syscall was 9 %
        # of this listener's samples under load.
        return b"%032x" % getrandbits(128)

    def _refusal_before_body(self, method: bytes) -> ProblemError | None:
        """What the aiohttp app would refuse before reading the body, in its order: the
        credential (the middleware), then the route, the method and the content type."""
        path = self._path()
        if not path.startswith("/health/"):  # the credential middleware's one exemption
            # Decoded as aiohttp decodes header values, so the same bytes prove the same caller.
            authorization = self._headers.get(b"authorization", b"").decode(
                "utf-8", "surrogateescape"
            )
            if self._server.service.caller(authorization) is None:
                return service_credential_refusal()
        if path != CHECK_PATH:
            return NotFound("Not Found", code="not_found", title="Not Found")
        if method != b"POST":
            return MethodNotAllowed(
                "Method Not Allowed", title="Method Not Allowed", headers={"Allow": "POST"}
            )
        content_type = self._headers.get(b"content-type", b"").partition(b";")[0]
        if content_type.strip().lower() != b"application/json":
            return UnsupportedMediaType(
                "send the body as application/json", code="unsupported_media_type"
            )
        return None

    async def _answer(self, answer: _Answer, body: bytes, request_id: bytes) -> None:
        started = time.perf_counter()
        start_request_context(request_id.decode())
        try:
            data = await self._server.service.answer(json_object(body), started)
        except ProblemError as exc:
            self._problem(answer, exc, request_id, CHECK_PATH, False)
            return
        except Exception:
            _LOG.exception("unhandled_error", path=CHECK_PATH, method="POST")
            self._problem(answer, _Internal(), request_id, CHECK_PATH, False)
            return
        answer.data = b"%s%s\r\nDate: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            _OK_HEAD,
            request_id,
            self._server.date,
            len(data),
            _CLOSE if answer.close else b"",
            data,
        )
        self._flush()

    def _problem(
        self, answer: _Answer, exc: ProblemError, request_id: bytes, path: str, head: bool
    ) -> None:
        status, body, extra = problem_of(exc, path)
        answer.data = b"%s%sX-Request-Id: %s\r\nDate: %s\r\n%sContent-Length: %d\r\n%s\r\n%s" % (
            _STATUS_LINES.get(status, _STATUS_LINES[500]),
            _PROBLEM_TYPE,
            request_id,
            self._server.date,
            extra,
            len(body),
            _CLOSE if answer.close else b"",
            b"" if head else body,
        )
        self._flush()

    def _refuse_and_close(self, problem: ProblemError) -> None:
        """Answer a request that cannot be read on (after the answers owed), then close."""
        self._stopped = True
        self._in_head = self._in_message = False
        self.deadline = None
        answer = _Answer()
        answer.close = answer.linger = True
        self._answers.append(answer)
        self._problem(answer, problem, self._request_id(), self._path(), False)

    def _flush(self) -> None:
        """Write every answer that is ready and next in order, in one write."""
        answers = self._answers
        if not answers or answers[0].data is None:
            return
        ready: list[bytes] = []
        last = None
        while answers and (data := answers[0].data) is not None:
            ready.append(data)
            last = answers.popleft()
            if last.close:
                self._stopped = True
                answers.clear()
                break
        transport = self._transport
        if transport is None:
            return
        transport.write(ready[0] if len(ready) == 1 else b"".join(ready))
        if last is not None and last.linger and transport.can_write_eof():
            transport.write_eof()
            if self._paused:  # to drop what still comes until the client closes
                transport.resume_reading()
            self._paused = self._write_paused = False
            self.deadline = self._server.loop.time() + LINGER_S
            return
        if (last is not None and last.close) or (
            self._stopped and not answers and not self._in_message
        ):
            transport.close()
            return
        if not answers and not self._in_message:
            self.deadline = self._server.loop.time() + self._server.keepalive_timeout_s
        if self._paused and len(answers) < MAX_PIPELINED // 2:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if (
            self._paused
            and not self._write_paused
            and len(self._answers) < MAX_PIPELINED
            and self._transport is not None
        ):
            self._paused = False
            self._transport.resume_reading()

    # --- the server's sweep and shutdown --------------------------------------------------

    def expire(self) -> None:
        """The client missed its deadline: a request begun is a 408, an idle connection closes."""
        if self._in_message:
            self._refuse_and_close(
                _Refused(408, "request_timeout", "the request was not received in time")
            )
        elif not self._answers and self._transport is not None:
            self._transport.close()

    def shut_down(self) -> None:
        """Read no more; close once the answers owed are written (at once when idle)."""
        self._stopped = True
        self.deadline = None
        if not self._answers and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _Internal(ProblemError):
    status = 500

    def __init__(self) -> None:
        super().__init__(
            "The server failed to handle this request; it has been logged.",
            code="internal_error",
            title="Internal Server Error",
        )


class CheckServer:
    """The listener: connections, their deadlines (one sweep a second, not a timer per
    request), the Date header, and a drain that lets answers owed be written."""

    def __init__(
        self,
        service: CheckService,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.request_timeout_s = request_timeout_s
        self.keepalive_timeout_s = keepalive_timeout_s
        self.connections: set[_Connection] = set()
        self.date = formatdate(usegmt=True).encode()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        #: Set while closing, once the last connection is gone.
        self._drained: asyncio.Event | None = None
        self.loop = asyncio.get_running_loop()

    async def start(self, host: str | None, port: int, *, reuse_port: bool | None = None) -> int:
        """Listen on ``host:port``; the port bound."""
        self._server = await self.loop.create_server(
            lambda: _Connection(self), host, port, reuse_port=reuse_port, backlog=1024
        )
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def forget(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if self._drained is not None and not self.connections:
            self._drained.set()

    def _sweep(self) -> None:
        self.date = formatdate(usegmt=True).encode()
        now = self.loop.time()
        for connection in list(self.connections):
            if connection.deadline is not None and now > connection.deadline:
                connection.expire()
        self._sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    async def close(self, timeout_s: float) -> None:
        """Stop listening, let in-flight answers be written for up to ``timeout_s``, then
        cut what is left."""
        if self._server is not None:
            self._server.close()
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
        if self._server is not None:
            await self._server.wait_closed()


class CheckSite(BaseSite):
    """``CheckServer`` as an aiohttp site, so an ``AppRunner`` starts and drains it like its
    other listeners: ``runner.cleanup()`` stops it."""

    __slots__ = ("_check", "_drain_s", "_host", "_port", "_reuse_port", "_service")

    def __init__(
        self,
        runner: web.AppRunner,
        service: CheckService,
        host: str | None,
        port: int,
        *,
        drain_timeout_s: float,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(runner)
        self._service = service
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._drain_s = drain_timeout_s
        self._check: CheckServer | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        await super().start()
        self._check = CheckServer(self._service)
        self._port = await self._check.start(self._host, self._port, reuse_port=self._reuse_port)

    async def stop(self) -> None:
        if self._check is not None:
            await self._check.close(self._drain_s)
        await super().stop()
