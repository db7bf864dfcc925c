"""The check API's own HTTP/1.1 listener: an asyncio protocol (on the shared connection
layer ``http1``) that does only what ``POST /internal/v1/ratelimit/check`` needs.

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
import time
from contextvars import Context, copy_context
from typing import Any

from urr_common.http1 import (
    CLOSE_LINE,
    HEAD_TOO_LARGE,
    KEEPALIVE_TIMEOUT_S,
    MAX_HEAD_BYTES,
    REQUEST_TIMEOUT_S,
    UPGRADE_REFUSED,
    Answer,
    Http1Connection,
    Http1Server,
    Internal,
)
from urr_common.logs import get_logger, start_request_context
from urr_common.payloads import json_object
from urr_common.problems import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProblemError,
    UnsupportedMediaType,
)
from urr_common.upstream_security import service_credential_refusal
from urr_gateway.checkapi import CHECK_PATH, MAX_BODY_BYTES, CheckService

__all__ = ["MAX_HEAD_BYTES", "CheckServer", "CheckSite"]

_LOG = get_logger(__name__)

#: A body over the limit is read and dropped up to this size (so its 413 is read by a client
#: still sending); a larger one is answered at once and the connection closed.
MAX_DISCARD_BYTES = 64 * 1024
#: Unanswered requests per connection before it stops being read.
MAX_PIPELINED = 64
#: The plain checks' heads a listener remembers (``_Connection.data_received``), and the
#: longest remembered.
MAX_PLAIN_HEADS = 256
MAX_PLAIN_HEAD_BYTES = 1024

_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: "
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHECK_PATH_BYTES = CHECK_PATH.encode()
_WANTED = frozenset({b"authorization", b"content-type", b"content-length", b"expect"})
_BODY_TOO_LARGE = PayloadTooLarge(
    f"the body is larger than {MAX_BODY_BYTES} bytes", code="payload_too_large"
)


class _Connection(Http1Connection["CheckServer"]):
    __slots__ = (
        "_body",
        "_body_len",
        "_completed",
        "_headers",
        "_method",
        "_plain_length",
        "_proven",
        "_refusal",
        "_tasks",
    )

    def __init__(self, server: CheckServer) -> None:
        super().__init__(server)
        self._tasks: set[asyncio.Task[None]] = set()
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_len = 0
        #: The method of the request being read (known once its head is).
        self._method = b""
        #: A problem found before the body was read (credential, path, method, type).
        self._refusal: ProblemError | None = None
        #: The ``Authorization`` value a request on this connection proved a caller with.
        self._proven: bytes | None = None
        #: Requests completed by the parser in the current read, and the body length of the
        #: first when it was a plain check (``_remember``), else -1.
        self._completed = 0
        self._plain_length = -1

    # --- the plain checks' heads, read once -------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Requests whose head is byte for byte one the parser read before as a plain check
        (``CheckServer.heads``), on a connection that proved that head's credential itself,
        are taken without the parser: the body is the ``Content-Length`` bytes after the
        head. Anything else (an unknown head, a body not all there, a message in progress)
        goes to the parser as before, and a read that was exactly one plain check teaches
        its head. The same bytes make the same request for llhttp from the start of a
        message, so nothing is accepted that the parser would not accept."""
        heads = self.server.heads
        while heads and not self._in_message and not self._stopped:
            end = data.find(b"\r\n\r\n", 0, MAX_PLAIN_HEAD_BYTES) + 4
            if end == 3:
                break
            plain = heads.get(data[:end])
            # A connection proves a credential through the parser's path before it is taken
            # on trust here (the same rule as ``_refusal_before_body``'s).
            if plain is None or plain[1] != self._proven:
                break
            stop = end + plain[0]
            if len(data) < stop:
                break
            # ``on_message_begin`` and ``on_message_complete`` for a head already judged: a
            # plain check (POST to the check path, its credential proven, keep-alive, no
            # ``Expect``, no client request id, ``Content-Length`` framing).
            self.deadline = None
            answer = Answer()
            self._answers.append(answer)
            self._inbound_id = None
            request_id = self.request_id()
            context = copy_context()
            context.run(self._answer_soon, answer, data[end:stop], request_id, context)
            if len(self._answers) >= MAX_PIPELINED:
                self.pause_reading()
            if len(data) == stop:
                return
            data = data[stop:]
        if (
            self._in_message
            or self._stopped
            or len(data) > MAX_PLAIN_HEAD_BYTES + MAX_BODY_BYTES
            or data[:1] in (b"\r", b"\n")  # (llhttp skips empty lines before a request)
        ):
            super().data_received(data)
            return
        # The parser starts a message at the first byte: see whether the read was exactly one
        # plain check.
        self._completed = 0
        self._plain_length = -1
        super().data_received(data)
        if self._completed == 1 and self._plain_length >= 0 and not self._in_message:
            self._remember(data)

    def _remember(self, data: bytes) -> None:
        """``data`` was one whole plain check, no more (the parser read one message from its
        first byte to its last): its head, the bytes up to the first empty line, is known
        from now on. The head's end is where the parser's was only if the head and the body
        the parser read make up the read exactly, which is checked."""
        end = data.find(b"\r\n\r\n") + 4
        if 4 <= end <= MAX_PLAIN_HEAD_BYTES and end + self._plain_length == len(data):
            heads = self.server.heads
            if len(heads) >= MAX_PLAIN_HEADS:
                heads.clear()  # a caller whose heads keep changing: the busy ones come back
            heads[data[:end]] = (self._plain_length, self._proven)

    # Tasks left running when the connection is lost are left to finish (a decision sent to
    # Redis counts either way); their answers are dropped.

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        # ``Http1Connection.on_message_begin`` inlined (keep in step with it): one Python call
        # per request instead of two.
        self._in_message = self._in_head = True
        self._head_bytes = 0
        self._fields = 0
        self._url = b""
        self._inbound_id = None
        server = self.server
        self.deadline = server.loop.time() + server.request_timeout_s
        self._headers = {}
        self._body = []
        self._body_len = 0
        self._refusal = None

    def on_header(self, name: bytes, value: bytes) -> None:
        # ``Http1Connection.on_header`` and this listener's ``header`` in one callback: one
        # Python call per header field instead of two. Keep in step with the base's checks.
        self._fields += 1
        if self._fields > self.max_headers:
            raise self.unreadable(HEAD_TOO_LARGE)
        name = name.lower()
        if name in _WANTED:
            # The first of repeated fields counts, as aiohttp's ``headers.get`` reads them.
            if name not in self._headers:
                self._headers[name] = value
        elif name == b"x-request-id" and self._inbound_id is None:
            self._inbound_id = value

    def on_headers_complete(self) -> None:
        self._in_head = False  # ``head_done``: the head's deadline is met
        parser = self.parser
        self._method = method = parser.get_method()
        if parser.should_upgrade():  # answered, then feed_data raises HttpParserUpgrade
            self._refusal = UPGRADE_REFUSED
            return
        self._refusal = self._refusal_before_body(method)
        length = self._headers.get(b"content-length")
        if length is not None and int(length) > MAX_BODY_BYTES:
            if int(length) > MAX_DISCARD_BYTES:
                raise self.unreadable(self._refusal or _BODY_TOO_LARGE)
            self._refusal = self._refusal or _BODY_TOO_LARGE
        if (
            self._refusal is None
            and self._headers.get(b"expect", b"").lower() == b"100-continue"
            and not self._answers
        ):
            self.transport.write(_CONTINUE)  # type: ignore[union-attr]  # called while connected

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._refusal is None and self._body_len <= MAX_BODY_BYTES:
            self._body.append(body)
        elif self._body_len > MAX_DISCARD_BYTES:
            raise self.unreadable(self._refusal or _BODY_TOO_LARGE)
        else:  # read on and drop, so the connection stays in step and the answer is read
            self._refusal = self._refusal or _BODY_TOO_LARGE
            self._body.clear()

    def on_message_complete(self) -> None:
        self._in_message = False
        self.deadline = None
        self._completed += 1
        # ``begin_answer`` inlined: a slot in the answer order for the request just read.
        answer = Answer()
        if not self.parser.should_keep_alive():
            # nothing after it is read (llhttp refuses it too)
            answer.close = self._stopped = True
        self._answers.append(answer)
        if self._refusal is UPGRADE_REFUSED:
            answer.close = answer.linger = self._stopped = True
        head_only = self._method == b"HEAD"
        request_id = self.request_id()
        if self._refusal is not None:
            self.answer_problem(answer, self._refusal, request_id, self.path(), head_only)
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            # In a context of its own, as a task would run it: the request id is this
            # request's log context, not the connection's.
            if (
                self._completed == 1
                and not answer.close
                and self._inbound_id is None
                and self._url == _CHECK_PATH_BYTES
                and b"content-length" in self._headers
                and b"expect" not in self._headers
            ):
                # A plain check (``data_received`` may remember its head).
                self._plain_length = self._body_len
            context = copy_context()
            context.run(self._answer_soon, answer, body, request_id, context)
            if len(self._answers) >= MAX_PIPELINED:
                self.pause_reading()

    def may_resume(self) -> bool:
        return len(self._answers) < MAX_PIPELINED // 2

    # --- answering -------------------------------------------------------------------------

    def _refusal_before_body(self, method: bytes) -> ProblemError | None:
        """What the aiohttp app would refuse before reading the body, in its order: the
        credential (the middleware), then the route, the method and the content type."""
        url = self._url
        # The check path itself, sent plainly (every request of a well-behaved caller), is
        # compared as bytes: no split at ``?``, no decoding.
        path = CHECK_PATH if url == _CHECK_PATH_BYTES else self.path()
        if path is CHECK_PATH or not path.startswith("/health/"):
            # (the credential middleware's one exemption)
            raw = self._headers.get(b"authorization", b"")
            # The bytes this connection proved a caller with before need no second proof: a
            # client learns nothing from comparing with what it sent itself.
            if raw != self._proven:
                # Decoded as aiohttp decodes header values: the same bytes, the same caller.
                authorization = raw.decode("utf-8", "surrogateescape")
                if self.server.service.caller(authorization) is None:
                    return service_credential_refusal()
                self._proven = raw
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

    def _answer_soon(
        self, answer: Answer, body: bytes, request_id: bytes, context: Context
    ) -> None:
        """Answer a plainly valid legacy request from the limiter's callback (no task, no
        coroutine: most of the per-request cost of the listener's Python was the task and
        its coroutine chain); any other request through a task (``_answer``)."""
        started = time.perf_counter()
        start_request_context(request_id.decode())
        try:
            data = json_object(body)
            # The reply runs in ``context`` itself (this request's alone), not in a copy.
            if self.server.service.answer_soon(
                data, started, self._answered, answer, request_id, context=context
            ):
                return
        except Exception as exc:  # answered as _answer answers it
            self._answered(answer, request_id, None, exc)
            return
        task = self.server.loop.create_task(self._answer(answer, data, request_id, started))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(
        self, answer: Answer, data: dict[str, Any], request_id: bytes, started: float
    ) -> None:
        try:
            body = await self.server.service.answer(data, started)
        except Exception as exc:  # answered: a problem, or a logged 500
            self._answered(answer, request_id, None, exc)
            return
        self._answered(answer, request_id, body, None)

    def _answered(
        self, answer: Answer, request_id: bytes, data: bytes | None, error: BaseException | None
    ) -> None:
        """Fill ``answer`` with the answer's bytes ``data``, or the problem of ``error``."""
        if data is None:
            if isinstance(error, ProblemError):
                self.answer_problem(answer, error, request_id, CHECK_PATH, False)
                return
            if isinstance(error, Exception):
                _LOG.error(
                    "unhandled_error",
                    path=CHECK_PATH,
                    method="POST",
                    exc_info=(type(error), error, error.__traceback__),
                )
            self.answer_problem(answer, Internal(), request_id, CHECK_PATH, False)
            return
        out = answer.data = b"%s%s\r\nDate: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            _OK_HEAD,
            request_id,
            self.server.date,
            len(data),
            CLOSE_LINE if answer.close else b"",
            data,
        )
        answers = self._answers
        transport = self.transport
        if (
            len(answers) == 1
            and answers[0] is answer
            and not answer.close
            and not self._stopped
            and transport is not None
        ):
            # The common case, as ``flush`` would do it: the only answer owed, on a
            # connection that stays open.
            answers.popleft()
            transport.write(out)
            if not self._in_message:
                server = self.server
                self.deadline = server.loop.time() + server.keepalive_timeout_s
            if self._reading_paused:
                self.resume_reading()
            return
        self.flush()


class CheckServer(Http1Server):
    """The check API's listener (connections, deadlines and drain: ``Http1Server``)."""

    def __init__(
        self,
        service: CheckService,
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        """The timeouts: ``Http1Server``'s (named, not ``**``: mypyc passes a ``**`` dict to a
        compiled ``__init__`` as one argument)."""
        super().__init__(
            request_timeout_s=request_timeout_s, keepalive_timeout_s=keepalive_timeout_s
        )
        self.service = service
        #: The heads of plain checks read by the parser (its exact bytes: the body's length
        #: and the ``Authorization`` value it carries): ``_Connection.data_received``.
        self.heads: dict[bytes, tuple[int, bytes | None]] = {}

    def connection(self) -> asyncio.Protocol:
        return _Connection(self)


# Last: ``checksite`` imports this module's names (mypyc cannot compile a class on
# ``BaseSite``, which has ``__slots__``; that module is never compiled).
from urr_gateway.checksite import CheckSite as CheckSite  # noqa: E402
