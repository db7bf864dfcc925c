"""The API Gateway emulator's own HTTP/1.1 listener, on the connection layer the gateway's
listeners use (``urr_common.http1``: httptools, answers in request order, head limits,
deadlines, 400/408/431 problem answers, backpressure, a drained close).

Why not aiohttp's server: every Tier-1 call of the local crowd crosses the emulator, and its
own process spent about 0.65 ms of CPU per call, 20-35 % of it in aiohttp's request and
response objects, its writer and the shared middlewares (docs/performance.md, branches i22-emu
and i22-edge), around a call that only turns a request into a proxy event and a result into
an answer.

What it answers, as the aiohttp app does (``URR_LOCAL_API_SERVER=aiohttp`` serves that app
instead, the way back): ``GET``/``HEAD`` of the app's own routes (``/health/live``,
``/health/ready``) through the app's handlers; anything else as the ``/{proxy+}`` resource:
the same proxy event (``proxy_events.proxy_event``: the decoded path and query, the header
fields as sent, the source IP), the same 429 throttle (``Invoker``), the same answer made of
the function's result, with the request's ``X-Request-Id`` (the client's when plain, else a
fresh one), its log context, and the shared HTTP metrics. Refused with a problem+json answer,
never a 500: a body over ``max_body_bytes`` (413, then the connection closes), malformed HTTP
and upgrades (400), a head too large (431), a request too slow (408). A function that fails
or a result that cannot be written is a logged 500 problem, as the problem middleware makes
it. A client that leaves mid-call does not stop the call (nor did aiohttp); its answer is
dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import NamedTuple, cast

import yarl
from aiohttp import web

from urr_common import http1
from urr_common.http1 import Answer, Internal
from urr_common.logs import get_logger, start_request_context
from urr_common.problems import BadRequest, PayloadTooLarge, ProblemError
from urr_common.service import HTTP_METRICS_KEY
from urr_vwr_lambda.local.containers import sticky_key
from urr_vwr_lambda.local.proxy_events import proxy_event, result_body, result_headers
from urr_vwr_lambda.local.throttle import INVOKER_KEY, READS, throttled

_LOG = get_logger(__name__)

#: Unanswered requests per connection before it stops being read.
MAX_PIPELINED = 64
#: The proxy resource's route label in the HTTP metrics (the aiohttp app's catch-all).
PROXY_ROUTE = "/{tail}"

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_OCTETS = ("Content-Type", "application/octet-stream")
#: Header fields of an answer the server writes itself.
_OWN = frozenset({"content-length", "transfer-encoding", "x-request-id", "date", "connection"})
_NO_BODY = frozenset({204, 304})

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def too_large(limit: int) -> PayloadTooLarge:
    """aiohttp's 413 as the problem middleware renders it."""
    return PayloadTooLarge(
        f"Maximum request body size {limit} exceeded.",
        code="payload_too_large",
        title=HTTPStatus(413).phrase,
    )


def split_url(url: bytes) -> tuple[str, list[tuple[str, str]]]:
    """The decoded path and query fields of a request target, as aiohttp's request has them
    (``yarl`` parses only a target with a query or something encoded)."""
    target = url.decode("utf-8", "surrogateescape").partition("#")[0]
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        # absolute-form (``http://host/path``) as aiohttp reads it; anything else is refused
        try:
            parsed = yarl.URL(target, encoded=True)
        except ValueError:
            raise BadRequest("the request target is not a path") from None
        if not parsed.absolute or not parsed.raw_path.startswith("/"):
            raise BadRequest("the request target is not a path")
    elif not query and "%" not in path:
        return path, []
    else:
        try:
            parsed = yarl.URL.build(path=path, query_string=query, encoded=True)
        except ValueError:
            raise BadRequest("the request target is not a path") from None
    return parsed.path, list(parsed.query.items())


def answer_bytes(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    request_id: bytes,
    date: bytes,
    *,
    head: bool,
    close: bool,
) -> bytes:
    """A whole answer: ``headers`` (framing and ids excepted) as given, then the server's
    own fields, as aiohttp writes a ``Response`` (``application/octet-stream`` when the
    answer has a body but no type). A field that would break the head (a line break) is a
    ValueError."""
    lines = [http1.status_line(status)]
    typed = False
    for name, value in headers:
        lowered = name.lower()
        if lowered in _OWN:
            continue
        typed = typed or lowered == "content-type"
        field = f"{name}: {value}\r\n"
        if "\n" in field[:-2] or "\r" in field[:-2]:
            raise ValueError(f"a line break in the header field {name!r}")
        lines.append(field.encode("utf-8"))
    if not typed and not head and body and status not in _NO_BODY:
        lines.append(b"%s: %s\r\n" % (_OCTETS[0].encode(), _OCTETS[1].encode()))
    lines.append(b"X-Request-Id: %s\r\nDate: %s\r\n" % (request_id, date))
    if status >= 200 and status not in _NO_BODY and (body or not head):
        lines.append(b"Content-Length: %d\r\n" % len(body))
    if close:
        lines.append(http1.CLOSE_LINE)
    lines.append(b"\r\n")
    if not head and status not in _NO_BODY:
        lines.append(body)
    return b"".join(lines)


class Request(NamedTuple):
    """One request read whole."""

    method: str
    url: bytes
    fields: list[tuple[bytes, bytes]]
    version: str
    request_id: bytes
    body: bytes

    def headers(self) -> list[tuple[str, str]]:
        """The header fields decoded as aiohttp decodes them."""
        return [
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self.fields
        ]


class ApiConnection(http1.Http1Connection["ApiServer"]):
    def __init__(self, server: ApiServer) -> None:
        super().__init__(server)
        #: The client's address (the event's ``sourceIp``; aiohttp's ``request.remote``).
        self.source_ip = "127.0.0.1"
        #: A problem found before the body was read (an upgrade, a body too large).
        self._refusal: ProblemError | None = None
        self._expect = False
        self._fields_seen: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_len = 0
        #: The calls in flight (a reference each, so none is collected before it answers).
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.source_ip = str(peer[0])

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fields_seen = []
        self._body = []
        self._body_len = 0
        self._expect = False
        self._refusal = None

    def header(self, name: bytes, value: bytes) -> None:
        self._fields_seen.append((name, value))
        if len(name) == 6 and name.lower() == b"expect":
            self._expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.head_done()
        parser = self.parser
        if parser.should_upgrade():  # answered, then feed_data raises HttpParserUpgrade
            self._refusal = http1.UPGRADE_REFUSED
            return
        limit = self.server.max_body_bytes
        for name, value in self._fields_seen:
            # (llhttp has checked that a Content-Length is a number, and that there is one)
            if len(name) == 14 and name.lower() == b"content-length" and int(value) > limit:
                raise self.unreadable(too_large(limit))
        if self._expect and not self._answers and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self.server.max_body_bytes:
            raise self.unreadable(too_large(self.server.max_body_bytes))
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self.deadline = None
        parser = self.parser
        answer = self.begin_answer(close=not parser.should_keep_alive())
        method = parser.get_method().decode("ascii", "replace")
        request_id = self.request_id()
        head = method == "HEAD"
        if self._refusal is not None:
            answer.close = answer.linger = self._stopped = True
            self.answer_problem(answer, self._refusal, request_id, self.path(), head)
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        # What the task needs of the request, taken now: the parser reads on meanwhile.
        request = Request(
            method, self._url, self._fields_seen, parser.get_http_version(), request_id, body
        )
        coro = self.server.serve(self, answer, request)
        task = self.server.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if len(self._answers) >= MAX_PIPELINED:
            self.pause_reading()

    def may_resume(self) -> bool:
        return len(self._answers) < MAX_PIPELINED // 2

    # --- answering -------------------------------------------------------------------------

    def fill(self, answer: Answer, data: bytes) -> None:
        answer.data = data
        self.flush()


class ApiServer(http1.Http1Server):
    """The emulator's listener for one app made by ``apigw.create_app``."""

    def __init__(self, app: web.Application, *, max_body_bytes: int, **timeouts: float) -> None:
        """``timeouts``: ``request_timeout_s``, ``keepalive_timeout_s`` (``Http1Server``)."""
        super().__init__(**timeouts)
        self.max_body_bytes = max_body_bytes
        self._invoker = app[INVOKER_KEY]
        self._metrics = app[HTTP_METRICS_KEY]
        self._routes = own_routes(app)
        self._throttled = throttled()

    def connection(self) -> asyncio.Protocol:
        return ApiConnection(self)

    async def serve(self, connection: ApiConnection, answer: Answer, request: Request) -> None:
        """Answer one request read whole (in a task of its own: its own log context)."""
        method, request_id, body = request.method, request.request_id, request.body
        start_request_context(request_id.decode("latin-1"))
        started = time.perf_counter()
        metrics = self._metrics
        metrics.in_flight.inc()
        path = request.url.partition(b"?")[0].decode("latin-1")
        label = PROXY_ROUTE
        status = 500
        head = method == "HEAD"
        close = answer.close
        try:
            try:
                path, query = split_url(request.url)
                route = self._routes.get(path) if method in READS else None
                if route is not None:
                    label = path
                    response = cast(web.Response, await route(cast(web.Request, None)))
                    status = response.status
                    data = self._whole(response, request_id, head, close)
                elif self._invoker.turned_away(method in READS):
                    status = 429
                    data = self._whole(self._throttled, request_id, head, close)
                else:
                    event = proxy_event(
                        method,
                        path,
                        query,
                        request.headers(),
                        f"HTTP/{request.version}",
                        connection.source_ip,
                        body,
                    )
                    result = await self._invoker.call(
                        event, sticky_key(path, body), method in READS
                    )
                    status = int(result.get("statusCode", 502))
                    data = answer_bytes(
                        status,
                        result_headers(result).items(),
                        result_body(result),
                        request_id,
                        self.date,
                        head=head,
                        close=close,
                    )
            except ProblemError as exc:
                status = exc.status
                data = connection.problem_bytes(exc, request_id, path, head=head, close=close)
            except Exception:  # CancelledError is a BaseException: it passes
                _LOG.exception("unhandled_error", path=path, method=method)
                status = 500
                data = connection.problem_bytes(
                    Internal(), request_id, path, head=head, close=close
                )
            connection.fill(answer, data)
        finally:
            metrics.in_flight.dec()
            metrics.observe(method, label, status, time.perf_counter() - started)

    def _whole(self, response: web.Response, request_id: bytes, head: bool, close: bool) -> bytes:
        """An aiohttp ``Response`` the app made (a health answer, the throttle's 429)."""
        body = response.body
        return answer_bytes(
            response.status,
            response.headers.items(),
            body if isinstance(body, bytes) else b"",
            request_id,
            self.date,
            head=head,
            close=close,
        )


def own_routes(app: web.Application) -> dict[str, Route]:
    """The app's ``GET`` routes besides the proxy's catch-all (the health checks), by path."""
    routes: dict[str, Route] = {}
    for resource in app.router.resources():
        if resource.canonical == PROXY_ROUTE:
            continue
        for route in resource:
            if route.method == "GET":
                routes[resource.canonical] = route.handler
    return routes


class ApiSite(http1.Http1Site):
    """``ApiServer`` as an aiohttp site (``runner.cleanup()`` drains it, then the app's
    cleanup shuts the containers down)."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None,
        port: int,
        *,
        max_body_bytes: int,
        drain_timeout_s: float,
        reuse_port: bool | None = None,
    ) -> None:
        app = runner.app
        super().__init__(
            runner,
            lambda: ApiServer(app, max_body_bytes=max_body_bytes),
            host,
            port,
            drain_timeout_s=drain_timeout_s,
            reuse_port=reuse_port,
        )


__all__ = ["MAX_PIPELINED", "ApiServer", "ApiSite", "answer_bytes", "split_url"]
