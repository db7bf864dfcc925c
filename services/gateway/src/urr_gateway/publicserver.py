"""The gateway's public listener as a protocol-level HTTP/1.1 server (issue 17): the
connection layer of ``http1`` (shared with the check API's listener) running the gateway
application's own pipeline and proxy, without aiohttp's server, request and response objects.

Every request goes through exactly what the aiohttp app runs (``URR_HTTP__SERVER=aiohttp``):
the app's ``GatewayPipeline`` (ingress, then every filter's step: cookie auth, JWT, rate
limit, auth gate with CSRF, entry token), then the app's health handlers or its
``UpstreamProxy.open`` (route, method, body limit, identity assertion, upstream pools and
their failures as problems). Refusals are the pipeline's own problem answers
(``chain._error_answer``), and every answer gets the headers the app's ``on_response_prepare``
receivers add (security headers, RateLimit, the expiring cookie) plus ``X-Request-Id``. The
HTTP metrics are the app's, labelled by the same route templates.

Bodies are streamed both ways. The client's body goes upstream piece by piece as it arrives
(``publicrequest.RequestBody``; the proxy's body deadlines and size limit apply as under
aiohttp); reading the client pauses while more than 256 KB wait for the upstream. The
upstream's answer is written as it comes (with its length, else chunked; close-delimited to
an HTTP/1.0 client), waiting whenever the client's socket buffer is full, while the upstream
client pauses reading the upstream. Answers up to 64 KB with a known length are read whole
and written in one piece (the common case).

Requests on one connection are handled one after the other in arrival order (pipelined ones
wait, at most ``MAX_PIPELINED`` of them before reading pauses). A request answered before
its body was read (a refusal, an upstream that answered early) closes the connection by half
after its answer and drops the rest. An upgrade request is served as a plain request, then
the connection closes. Head limits, deadlines, malformed HTTP (including the smuggling
shapes llhttp refuses: ``Content-Length`` with ``Transfer-Encoding``, repeated or bad
lengths, bad chunk sizes) and the drain are ``http1``'s.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from random import getrandbits
from typing import TYPE_CHECKING, Any, cast

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy, istr

from urr_common.http1 import (
    HEAD_TOO_LARGE,
    KEEPALIVE_TIMEOUT_S,
    REQUEST_ID_RE,
    REQUEST_TIMEOUT_S,
    Answer,
    Http1Connection,
    Http1Server,
    Unreadable,
    status_line,
)
from urr_common.logs import get_logger, start_request_context
from urr_common.metrics import loop_adder
from urr_common.service import HTTP_METRICS_KEY, REQUEST_ID_HEADER, REQUEST_ID_KEY
from urr_gateway.app import GATEWAY_METRICS_KEY, PIPELINE_KEY, PROXY_KEY
from urr_gateway.chain import _error_answer
from urr_gateway.clientgone import ClientGone
from urr_gateway.forwarding import downstream_response_headers, strip_hop_by_hop
from urr_gateway.prepare import sync_receivers
from urr_gateway.proxy import _SMALL_BODY_BYTES
from urr_gateway.publicrequest import (
    BODY_HIGH_WATER,
    BODY_LOW_WATER,
    GatewayRequest,
    RequestBody,
)
from urr_gateway.tokencache import TokenDigests
from urr_gateway.upstream import InvalidHeader, RequestBodyError, UpstreamError
from urr_gateway.upstream.connection import _NAMES
from urr_gateway.upstream.connection import _name as new_name

if TYPE_CHECKING:
    from urr_gateway.context import RequestFacts
    from urr_gateway.routing import Upstream
    from urr_gateway.upstream import UpstreamResponse

_LOG = get_logger(__name__)

#: Longest a streamed answer waits for a client that reads nothing (then the connection is
#: cut and the upstream connection it held is freed: a client that stops reading cannot
#: hold a pool slot for ever).
SEND_TIMEOUT_S = 30.0
#: Requests read ahead of the one being answered before reading pauses.
MAX_PIPELINED = 16
#: A browser's cookies make heads larger than the check API's.
PUBLIC_MAX_HEAD_BYTES = 32 * 1024
PUBLIC_MAX_HEADERS = 100
#: The status a request is counted as when its client left before its answer was written
#: (nginx's "client closed request"); never sent, only counted.
CLIENT_CLOSED = 499
_CATCH_ALL = "/{tail:.*}"
#: Distinct (status, reason) lines kept; others are rendered per answer.
_MAX_STATUS_LINES = 64
_NO_BODY_STATUSES = frozenset({204, 304})
_FRAMING = (hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING)
#: ``REQUEST_ID_HEADER`` as an ``istr`` (see ``forwarding``).
_REQUEST_ID = istr(REQUEST_ID_HEADER)
_LAST_CHUNK = b"0\r\n\r\n"
#: One header field's ``name: value`` (``str.join`` bound, called by ``map`` from C).
_FIELD_JOIN = ": ".join
#: ``http1``'s X-Request-Id rule on the decoded value: the same bytes pass (the rule is ASCII;
#: any other byte decodes to a character outside it).
_REQUEST_ID_TEXT_RE = re.compile(REQUEST_ID_RE.pattern.decode("ascii"))
#: Request methods decoded, by their bytes: bounded by llhttp, which reads only the methods
#: it knows (a few dozen).
_METHODS: dict[bytes, str] = {}
#: Header names as cached ``istr``s, by their bytes (``upstream.connection``'s bounded cache).
name_of = _NAMES.get


def _method(raw: bytes) -> str:
    method = _METHODS[raw] = raw.decode("ascii")
    return method


class _Exchange:
    """One request, its connection, and how far its answer got."""

    __slots__ = (
        "answer",
        "body",
        "close",
        "connection",
        "facts",
        "head_sent",
        "http10",
        "request",
        "request_id",
    )

    def __init__(
        self,
        connection: _PublicConnection,
        request: GatewayRequest,
        body: RequestBody | None,
        answer: Answer,
    ) -> None:
        self.connection = connection
        self.request = request
        self.body = body
        self.answer = answer
        #: The client asked for the connection to close after this answer (or it must).
        self.close = False
        self.http10 = False
        self.head_sent = False
        self.request_id = ""
        #: What ingress and the filters learnt (once ingress has run).
        self.facts: RequestFacts | None = None


class _Prepared:
    """What an ``on_response_prepare`` receiver reads and edits of an answer."""

    __slots__ = ("headers",)

    def __init__(self, headers: CIMultiDict[str]) -> None:
        self.headers = headers


class _PublicConnection(Http1Connection["PublicServer"]):
    max_head_bytes = PUBLIC_MAX_HEAD_BYTES
    max_headers = PUBLIC_MAX_HEADERS

    __slots__ = (
        "_body_buffered",
        "_drain_waiter",
        "_idle_waiter",
        "_last_headers",
        "_last_pairs",
        "_pairs",
        "_peer",
        "_queue",
        "_reading",
        "_worker",
        "token_digests",
    )

    def __init__(self, server: PublicServer) -> None:
        super().__init__(server)
        #: The head being read, its fields as llhttp handed them over (bytes, undecoded).
        self._pairs: list[tuple[bytes, bytes]] = []
        #: The previous head's fields and the headers made of them: a keep-alive client sends
        #: the same fields again and again (its cookie, its tokens), and a head whose fields
        #: are equal byte for byte gets the same read-only headers, neither decoded nor
        #: built again. Their strings keep their hashes, so the cookie and the entry token
        #: are not hashed again as cache keys either. Only this connection's own last head.
        self._last_pairs: list[tuple[bytes, bytes]] | None = None
        self._last_headers: CIMultiDictProxy[str] | None = None
        self._queue: deque[_Exchange] = deque()
        #: The exchange whose body is being read.
        self._reading: _Exchange | None = None
        self._body_buffered = 0
        self._drain_waiter: asyncio.Future[None] | None = None
        self._peer: str | None = None
        #: The task answering the queue (held: the loop keeps only a weak reference).
        self._worker: asyncio.Task[None] | None = None
        #: What the worker waits on between requests (set by the next request's head).
        self._idle_waiter: asyncio.Future[None] | None = None
        #: The digests of the tokens this client showed (its requests' token caches' keys).
        self.token_digests = TokenDigests()

    # --- asyncio protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) and peer else None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.stopped_reading()
        self._wake_drain()
        self._wake_worker()  # to end: nothing more will be read

    def eof_received(self) -> bool | None:
        # The client will send nothing more: answer what was read, then close.
        self._stopped = True
        self.stopped_reading()
        if self._queue:
            return True  # keep the transport open for the answers owed
        return None

    def resume_writing(self) -> None:
        super().resume_writing()
        self._wake_drain()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        # ``Http1Connection.on_message_begin`` inlined (keep in step with it): the field count
        # is the length of ``_pairs`` and the client's X-Request-Id is looked up in them.
        self._in_message = self._in_head = True
        self._head_bytes = 0
        self._url = b""
        server = self.server
        self.deadline = server.loop.time() + server.request_timeout_s
        self._pairs = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # ``Http1Connection.on_header`` and a listener's ``header`` in one callback: one Python
        # call per header field instead of two. Kept as bytes: decoded in
        # ``on_headers_complete``, unless the connection's previous head had the same fields.
        pairs = self._pairs
        if len(pairs) >= self.max_headers:
            raise self.unreadable(HEAD_TOO_LARGE)
        pairs.append((name, value))

    def request_id(self) -> bytes:
        """``Http1Connection.request_id`` for a refusal (the fields read so far are
        ``_pairs``): the client's first X-Request-Id when short and plain, else a fresh one."""
        for name, value in self._pairs:
            if name.lower() == b"x-request-id":
                if REQUEST_ID_RE.fullmatch(value):
                    return value
                break
        return b"%032x" % getrandbits(128)

    def on_headers_complete(self) -> None:
        self._in_head = False  # ``head_done``: the head's deadline is met
        self.deadline = None
        parser = self.parser
        pairs = self._pairs
        headers: CIMultiDictProxy[str]
        if pairs == self._last_pairs:  # compared in C: equal names and values, byte for byte
            kept: Any = self._last_headers  # set with them (``Any``: no ``typing.cast`` call)
            headers = kept
            keep = False  # kept already
        else:
            # Decoded as aiohttp decodes them (the same bytes make the same header for every
            # step); the name as a cached ``istr`` (the upstream client's cache), which the
            # multidict does not case-fold again.
            headers = CIMultiDictProxy(
                CIMultiDict(
                    [
                        (name_of(name) or new_name(name), value.decode("utf-8", "surrogateescape"))
                        for name, value in pairs
                    ]
                )
            )
            # Bounded: kept only when the head came in the read (or slice) that completed it,
            # so it is no longer than ``max_head_bytes // 4`` (``data_received`` feeds no
            # more at once, and counts the bytes of a head that spans reads).
            keep = not self._head_bytes
        length_text = headers.get(hdrs.CONTENT_LENGTH)
        length = int(length_text) if length_text is not None else None
        body = None
        if (length is not None and length > 0) or hdrs.TRANSFER_ENCODING in headers:
            expect = headers.get(hdrs.EXPECT, "").lower() == "100-continue"
            body = RequestBody(self, expect_continue=expect and parser.get_http_version() == "1.1")
        elif keep:
            # Kept only for a head without a body: a chunked body's trailer fields are
            # appended to ``_pairs`` after this (counted against ``max_headers``), which must
            # never change what the kept fields say.
            self._last_pairs = pairs
            self._last_headers = headers
        raw_method = parser.get_method()
        request = GatewayRequest(
            _METHODS.get(raw_method) or _method(raw_method),
            self._url.decode("utf-8", "surrogateescape"),
            headers,
            self._peer,
            headers.get(hdrs.HOST) or self.server.hostname,
            body,
            length,
        )
        # ``begin_answer(close=False)`` inlined.
        answer = Answer()
        self._answers.append(answer)
        exchange = _Exchange(self, request, body, answer)
        exchange.close = not parser.should_keep_alive()
        # The client's X-Request-Id when short and plain (``new_request_id``'s rule), else a
        # fresh one without a getrandom syscall (``Http1Connection.request_id`` on the str).
        inbound = headers.get(_REQUEST_ID)
        exchange.request_id = (
            inbound
            if inbound is not None and _REQUEST_ID_TEXT_RE.fullmatch(inbound)
            else getrandbits(128).to_bytes(16, "big").hex()  # "%032x", a quarter of the cost
        )
        exchange.http10 = parser.get_http_version() == "1.0"
        self._queue.append(exchange)
        self._reading = exchange
        if len(self._queue) > MAX_PIPELINED:
            self.pause_reading()
        if self._worker is None:
            self._worker = self.server.loop.create_task(self._work())
        else:
            self._wake_worker()

    def on_body(self, body: bytes) -> None:
        reading = self._reading
        if reading is not None and reading.body is not None:
            reading.body.feed(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self.deadline = None
        reading, self._reading = self._reading, None
        if reading is None:
            return
        if reading.body is not None:
            reading.body.finish()
        if reading.close:  # nothing after it is read (llhttp refuses it too)
            self._stopped = True

    def upgraded(self) -> None:
        # Served as a plain request (the upstream never sees Upgrade: hop-by-hop), and the
        # connection closes after it: what follows the head is not HTTP/1.1 to us.
        if self._queue:
            self._queue[-1].close = True
        super().upgraded()

    def stopped_reading(self) -> None:
        reading, self._reading = self._reading, None
        if reading is not None and reading.body is not None and not reading.body.done:
            reading.body.fail(ClientGone("the client's body ended early"))

    def shut_down(self) -> None:
        reading = self._reading
        if reading is not None:  # its body may still arrive; nothing after it is read
            reading.close = True
            return
        super().shut_down()

    # --- flow control ----------------------------------------------------------------------

    def body_buffered(self, delta: int) -> None:
        self._body_buffered += delta
        if self._body_buffered > BODY_HIGH_WATER:
            self.pause_reading()
        elif self._reading_paused and self._body_buffered < BODY_LOW_WATER:
            self.resume_reading()

    def may_resume(self) -> bool:
        return self._body_buffered < BODY_LOW_WATER and len(self._queue) <= MAX_PIPELINED

    def write_raw(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def send(self, data: bytes) -> None:
        """Write part of the answer being given (it is first in the answer order)."""
        if self.transport is None or self.transport.is_closing():
            raise ClientGone("the client went away")
        self.transport.write(data)

    async def drain(self) -> None:
        """Until the client's socket can take more (or the client is gone)."""
        while self._write_paused:
            if self.transport is None:
                raise ClientGone("the client went away")
            waiter = self._drain_waiter = self.server.loop.create_future()
            try:
                await asyncio.wait_for(waiter, self.server.send_timeout_s)
            except TimeoutError as exc:
                raise ClientGone("the client stopped reading") from exc
            finally:
                self._drain_waiter = None
        if self.transport is None:
            raise ClientGone("the client went away")

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cut(self) -> None:
        """End the connection at once (an answer that cannot be finished honestly)."""
        self._stopped = True
        if self.transport is not None:
            self.transport.abort()

    # --- serving, one request at a time ------------------------------------------------------

    async def _work(self) -> None:
        """Answer the queue, then wait for the connection's next request while more may
        come: one task per connection rather than one per request (a task costs more to
        create than a future to wake). One coroutine: every level of the await chain is
        resumed once per suspension of the request, so the task runs ``serve`` directly."""
        queue = self._queue
        serve = self.server.serve
        loop = self.server.loop
        try:
            while True:
                while queue:
                    exchange = queue[0]
                    try:
                        await serve(exchange)
                    except Exception:  # serve answers everything it can; a bug: log, cut
                        _LOG.exception("public_server_error")
                        self.cut()
                    finally:
                        queue.popleft()
                        self._finish(exchange)
                    if self.transport is None:
                        queue.clear()
                        return
                if self._stopped:  # no request will follow (connection_lost sets it too)
                    return
                waiter = self._idle_waiter = loop.create_future()
                await waiter
        finally:
            self._worker = None
            self._idle_waiter = None

    def _wake_worker(self) -> None:
        waiter, self._idle_waiter = self._idle_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self, exchange: _Exchange) -> None:
        answer = exchange.answer
        body = exchange.body
        if body is not None and not body.done:
            # Answered before its body arrived: the rest is dropped, the connection ends.
            if self._reading is exchange:
                self._reading = None
            body.discard()
            answer.close = answer.linger = True
        elif body is not None:
            body.discard()  # arrived but not read (a refusal): forget it
        # The last answer closes, unless a refusal after it does (it must still be written).
        if exchange.close or (self._stopped and not self._queue and len(self._answers) == 1):
            answer.close = True
        if answer.data is None:
            answer.data = b""
        if not self._queue and self._reading_paused:
            self.resume_reading()
        self.flush()


class PublicServer(Http1Server):
    """The public listener of one gateway application (built by ``create_app``; its
    clients are started by the app's runner)."""

    def __init__(
        self,
        app: web.Application,
        *,
        send_timeout_s: float = SEND_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S,
    ) -> None:
        """``request_timeout_s``, ``keepalive_timeout_s``: ``Http1Server``'s (named, not
        ``**``: mypyc passes a ``**`` dict to a compiled ``__init__`` as one argument)."""
        super().__init__(
            request_timeout_s=request_timeout_s, keepalive_timeout_s=keepalive_timeout_s
        )
        self.send_timeout_s = send_timeout_s
        pipeline = app[PIPELINE_KEY]
        steps = pipeline.steps
        if steps is None:
            raise ValueError("the protocol server runs filters as steps; a filter has none")
        self._ingress = pipeline.ingress
        self._steps = steps
        self._proxy = app[PROXY_KEY]
        self._metrics = app[HTTP_METRICS_KEY]
        #: The gauge's value as one call (``loop_adder``: no per-call checks, no lock: only
        #: the loop's thread moves it), +1 then -1.
        self._in_flight = loop_adder(self._metrics.in_flight)
        self._gateway_metrics = app[GATEWAY_METRICS_KEY]
        self._prepare = tuple(app.on_response_prepare)
        #: The receivers' synchronous twins (``None``: some must be awaited).
        self._prepare_sync = sync_receivers(app)
        self._health, self._catch_all = _routes(app)
        self._status_lines: dict[tuple[int, str | None], str] = {}
        #: ``request.host`` of a request without ``Host``, as aiohttp answers it.
        self.hostname = socket.gethostname()

    def connection(self) -> asyncio.Protocol:
        return _PublicConnection(self)

    async def serve(self, exchange: _Exchange) -> None:
        """Answer one request, as ``GatewayPipeline.middleware`` and the app's handlers do."""
        request = exchange.request
        request_id = exchange.request_id
        request._state[REQUEST_ID_KEY] = request_id  # the dict itself: no __setitem__ call
        start_request_context(request_id)
        handler = self._health.get(request.path) if request.method in ("GET", "HEAD") else None
        label = self._catch_all if handler is None else request.path
        started = time.perf_counter()
        in_flight = self._in_flight
        in_flight(1)
        status = 500
        refused: Exception | None = None
        try:
            try:
                # Not through ``typing.cast`` (a Python call): ``received`` is ``Any``.
                received: Any = request
                routed, facts = self._ingress(received, request_id)
                facts.token_digests = exchange.connection.token_digests
                exchange.facts = facts
                for step in self._steps:
                    pending = step(routed, facts)
                    if pending is not None:
                        await pending
                if handler is not None:
                    status = await self._whole(exchange, await handler(routed))
                else:
                    # The proxying inlined here, not in a coroutine of its own: one coroutine
                    # made and one level resumed less per request (the upstream's headers).
                    proxy = self._proxy
                    upstream, sending = proxy.start(routed)
                    try:
                        answer = await sending
                    except (RequestBodyError, InvalidHeader, UpstreamError) as failed:
                        # Its own name: mypyc types one name per function (``exc`` below).
                        raise proxy.send_failed(upstream, failed) from failed
                    try:
                        status = answer.status
                        if not self._relayed_whole(exchange, answer):
                            await self._relay(exchange, answer, upstream)
                    finally:
                        answer.close()
            except Exception as exc:  # CancelledError is a BaseException: it passes
                refused = exc
            # (Answered outside the except clause: compiled, a coroutine waiting inside one
            # leaves its exception set as the one being handled for every other callback of
            # the loop, and a refusal's answer can wait on the client.)
            if refused is not None:
                status = await self._refused(exchange, refused)
        finally:
            in_flight(-1)
            self._metrics.observe(request.method, label, status, time.perf_counter() - started)

    async def _refused(self, exchange: _Exchange, exc: Exception) -> int:
        connection = exchange.connection
        if exchange.head_sent or connection.transport is None:
            # A client that left (its socket reset or closed, or it stopped reading) is no
            # server error: counted as 499, so an alarm on 5xx does not fire on hang-ups.
            left = connection.transport is None or isinstance(exc, ConnectionResetError)
            connection.cut()  # mid-answer: a cut connection is the only honest signal
            return CLIENT_CLOSED if left else 500
        if isinstance(exc, ClientGone):
            return 400  # the body broke HTTP: the connection's own 400 follows, then closes
        request = cast(web.Request, exchange.request)
        problem = _error_answer(request, exc, exchange.facts, exchange.request_id)
        if problem is not None:
            return await self._whole(exchange, problem)
        if isinstance(exc, web.HTTPException):  # a redirect raised by a step
            headers = CIMultiDict(exc.headers)
            headers[_REQUEST_ID] = exchange.request_id
            body = exc.text.encode() if exc.text else b""
            if self._prepare_sync is None:  # no coroutine made per answer otherwise
                await self._prepare_async(exchange, headers)
            self._write_whole(exchange, exc.status, None, headers, body)
            return exc.status
        connection.cut()  # the client went away (ConnectionResetError)
        return CLIENT_CLOSED

    async def _whole(self, exchange: _Exchange, response: web.StreamResponse) -> int:
        """Write an aiohttp ``Response`` the app made (a health answer, a problem)."""
        headers = CIMultiDict(response.headers)
        headers[_REQUEST_ID] = exchange.request_id
        body = getattr(response, "body", None)
        data = body if isinstance(body, bytes) else b""
        if self._prepare_sync is None:  # no coroutine made per answer otherwise
            await self._prepare_async(exchange, headers)
        self._write_whole(exchange, response.status, response.reason, headers, data)
        return response.status

    def _write_whole(
        self,
        exchange: _Exchange,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        body: bytes,
    ) -> None:
        head_only = exchange.request.method == "HEAD"
        if not (head_only and hdrs.CONTENT_LENGTH in headers):
            popall = headers.popall  # ``_FRAMING``, unrolled
            popall(hdrs.CONTENT_LENGTH, None)
            popall(hdrs.TRANSFER_ENCODING, None)
            if status >= 200 and status not in _NO_BODY_STATUSES:
                headers[hdrs.CONTENT_LENGTH] = str(len(body))
        head = self._head(exchange, status, reason, headers)
        exchange.head_sent = True
        # ``connection.send`` inlined (keep in step with it).
        transport = exchange.connection.transport
        if transport is None or transport.is_closing():
            raise ClientGone("the client went away")
        transport.write(head if head_only or not body else head + body)

    def _small(self, exchange: _Exchange, answer: UpstreamResponse) -> bool:
        """Whether the answer is read whole and written in one piece."""
        length = answer.content_length
        return (
            exchange.request.method == "HEAD"
            or answer.status in _NO_BODY_STATUSES
            or (length is not None and length <= _SMALL_BODY_BYTES)
        )

    def _relayed_whole(self, exchange: _Exchange, answer: UpstreamResponse) -> bool:
        """The common case without awaiting: a small answer that arrived with its headers,
        written at once (``False``: ``_relay`` must do it)."""
        if not answer.complete or self._prepare_sync is None:
            return False
        # ``_small`` inlined (keep in step with it).
        length = answer.content_length
        if not (
            exchange.request.method == "HEAD"
            or answer.status in _NO_BODY_STATUSES
            or (length is not None and length <= _SMALL_BODY_BYTES)
        ):
            return False
        body = answer.take_body()
        # Nothing reads a complete answer's headers again: edited in place, not copied.
        headers = strip_hop_by_hop(answer.headers)
        headers[_REQUEST_ID] = exchange.request_id
        self._write_whole(exchange, answer.status, answer.reason, headers, body)
        return True

    async def _relay(
        self, exchange: _Exchange, answer: UpstreamResponse, upstream: Upstream
    ) -> None:
        """Relay an answer ``_relayed_whole`` did not: one still arriving, or streamed."""
        if self._small(exchange, answer):
            try:
                body = await answer.read()
            except UpstreamError as exc:
                raise self._proxy._upstream_problem(upstream, exc) from exc
            headers = downstream_response_headers(answer.headers)
            headers[_REQUEST_ID] = exchange.request_id
            if self._prepare_sync is None:
                await self._prepare_async(exchange, headers)
            self._write_whole(exchange, answer.status, answer.reason, headers, body)
            return
        headers = downstream_response_headers(answer.headers)
        headers[_REQUEST_ID] = exchange.request_id
        await self._stream(exchange, answer, headers, upstream)

    async def _stream(
        self,
        exchange: _Exchange,
        answer: UpstreamResponse,
        headers: CIMultiDict[str],
        upstream: str,
    ) -> None:
        """Relay a large or unknown-length answer as it arrives, at the client's pace."""
        connection = exchange.connection
        length = answer.content_length
        chunked = length is None and not exchange.http10
        for name in _FRAMING:
            headers.popall(name, None)
        if length is not None:
            headers[hdrs.CONTENT_LENGTH] = str(length)
        elif chunked:
            headers[hdrs.TRANSFER_ENCODING] = "chunked"
        else:
            exchange.close = True  # an HTTP/1.0 client reads to the close
        if self._prepare_sync is None:  # no coroutine made per answer otherwise
            await self._prepare_async(exchange, headers)
        connection.send(self._head(exchange, answer.status, answer.reason, headers))
        exchange.head_sent = True
        try:
            while chunk := await answer.read_chunk():
                connection.send(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await connection.drain()
        except UpstreamError as exc:
            self._gateway_metrics.upstream_errors.labels(upstream, "mid_stream").inc()
            _LOG.warning("upstream_failed_mid_stream", upstream=upstream, error=repr(exc)[:200])
            connection.cut()
            return
        if chunked:
            connection.send(_LAST_CHUNK)

    async def _prepare_async(self, exchange: _Exchange, headers: CIMultiDict[str]) -> None:
        """Await the app's ``on_response_prepare`` receivers, when one has no synchronous
        twin (``_head`` runs the twins otherwise; the gateway's own receivers have them).
        Callers test ``_prepare_sync`` first, so no coroutine is made when there are twins."""
        prepared = cast(web.StreamResponse, _Prepared(headers))
        request = cast(web.Request, exchange.request)
        for receiver in self._prepare:
            await receiver(request, prepared)

    def _head(
        self, exchange: _Exchange, status: int, reason: str | None, headers: CIMultiDict[str]
    ) -> bytes:
        """The answer's head, with every header the app's ``on_response_prepare`` adds."""
        facts = exchange.facts
        limited = facts.rate_limit_headers if facts is not None else None
        if limited:
            # The decision's own values, as the aiohttp pipeline sets them on an answer it
            # returns (an upstream's are replaced).
            headers.update(limited)
        receivers = self._prepare_sync
        if receivers is not None:
            # ``Any`` rather than ``typing.cast``: no call but the receivers'. (Compiled, the
            # constructor is a C call; ``object.__new__`` of a native class is refused.)
            prepared: Any = _Prepared(headers)
            request: Any = exchange.request
            if limited:
                # Set above: the receiver's ``merge`` of them would find every name, at the cost
                # of a lookup each (``responseheaders`` skips it while this is set).
                facts.rate_limit_set = True  # type: ignore[union-attr]
                for receiver in receivers:
                    receiver(request, prepared)
                facts.rate_limit_set = False  # type: ignore[union-attr]
            else:
                for receiver in receivers:
                    receiver(request, prepared)
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = self.date_text
        # Whether this answer is the connection's last: the client asked, its body is
        # unread, or reading stopped with nothing queued behind it (a refusal written after
        # it, one more answer owed, closes the connection instead).
        connection = exchange.connection
        body = exchange.body
        if (
            exchange.close
            or (body is not None and not body.done)
            or (
                connection._stopped
                and len(connection._queue) == 1
                and len(connection._answers) == 1
            )
        ):
            exchange.close = True
            headers[hdrs.CONNECTION] = "close"
        elif exchange.http10:
            headers[hdrs.CONNECTION] = "keep-alive"
        # Names are ``istr``s: joining them is about half the cost of formatting them, and
        # ``map`` runs the join of each field from C (never empty: Date is set above).
        fields = "\r\n".join(map(_FIELD_JOIN, headers.items()))
        line = self._status_lines.get((status, reason)) or self._status_text(status, reason)
        return f"{line}{fields}\r\n\r\n".encode("utf-8", "surrogateescape")

    def _status_text(self, status: int, reason: str | None) -> str:
        """The status line, kept per (status, reason): upstreams send a handful of them."""
        key = (status, reason)
        line = self._status_lines.get(key)
        if line is None:
            line = status_line(status, reason).decode("latin-1")
            if len(self._status_lines) < _MAX_STATUS_LINES:  # reasons are the upstream's text
                self._status_lines[key] = line
        return line


Handler = Callable[[Any], Awaitable[web.StreamResponse]]


def _routes(app: web.Application) -> tuple[dict[str, Handler], str]:
    """The app's own GET routes besides the proxy's catch-all (the health checks), by path;
    and the catch-all's template (the metrics label of proxied requests)."""
    health: dict[str, Handler] = {}
    catch_all = _CATCH_ALL
    for resource in app.router.resources():
        canonical = resource.canonical
        if canonical == _CATCH_ALL:
            continue
        for route in resource:
            if route.method == "GET":
                health[canonical] = route.handler
    return health, catch_all


__all__ = ["CLIENT_CLOSED", "MAX_PIPELINED", "PublicServer", "Unreadable"]
