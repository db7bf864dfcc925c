"""The edge stand-in's own HTTP/1.1 listener, on the connection layer of the API Gateway
emulator's (``urr_common.http1`` through ``local.apigw_server``: httptools, answers in request
order, head and body limits, deadlines, 400/408/413/431 problem answers, backpressure, a
drained close).

Why not aiohttp's server: every request of the local flash crowd crosses the edge, the
largest single process of the crowd (~0.55 ms of CPU a request), and a third of that went to
aiohttp's server, its writer and the three shared middlewares (docs/performance.md, branch
i22-edge), around work that is a verifier call, a file in memory or a pooled upstream call.

What it answers, as the aiohttp app of ``local.edge`` does (``URR_LOCAL_EDGE_SERVER=aiohttp``
serves that app instead, the way back), both through the same ``Edge``: ``GET``/``HEAD`` of
the app's other routes (``/health/live``, ``/health/ready``) through the app's handlers;
``GET``/``HEAD /vwr[/...]`` the waiting page, its assets and event documents; ``/vwr-api/...``
the API Gateway emulator; anything else the gateway; the edge function first on all three.
Each answer carries the request's ``X-Request-Id`` (the client's when plain, else a fresh
one), runs in its log context and is counted in the shared HTTP metrics under the route
aiohttp would name. Refused with a problem+json answer, never a 500: a body over
``max_body_bytes`` (413 before the function runs: aiohttp read a body only to proxy it, so a
viewer it refused kept a 403 or 302 there), malformed HTTP and upgrades (400), a head too
large (431), a request too slow (408). A viewer that leaves mid-proxy does not stop the call
(nor did aiohttp); its answer is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import yarl
from aiohttp import web

from urr_common.http1 import Answer, Http1Server, Http1Site, Internal, status_line
from urr_common.logs import get_logger, start_request_context
from urr_common.problems import ProblemError
from urr_common.service import HTTP_METRICS_KEY
from urr_vwr_lambda.local.apigw_server import (
    ApiConnection,
    ApiServer,
    Request,
    answer_bytes,
    own_routes,
    split_url,
)
from urr_vwr_lambda.local.cloudfront import generated_answer, viewer_event
from urr_vwr_lambda.local.edge import (
    API_PREFIX,
    EDGE_KEY,
    HOP_BY_HOP,
    PAGE_ROUTE,
    api_headers,
    first_field,
    forward_headers,
)
from urr_vwr_lambda.local.throttle import READS
from urr_vwr_lambda.local.upstream import Answer as UpstreamAnswer

_LOG = get_logger(__name__)

#: The routes of the edge's own behaviours, by their label in the HTTP metrics.
PAGE_ROUTES = (PAGE_ROUTE, PAGE_ROUTE + "/{tail}")
API_ROUTE = API_PREFIX + "/{tail}"
ORIGIN_ROUTE = "/{tail}"
_PAGE_PREFIX = PAGE_ROUTE + "/"
_API_PREFIX = API_PREFIX + "/"


def routed_path(url: bytes) -> tuple[str, str]:
    """The decoded path of a request target (aiohttp's ``request.path``) and the one its
    router matches (``path_safe``: an encoded ``/`` or ``%`` stays encoded)."""
    path, _ = split_url(url)
    raw = url.partition(b"?")[0]
    if b"%" not in raw or not raw.startswith(b"/"):
        return path, path
    target = raw.decode("utf-8", "surrogateescape")
    return path, yarl.URL.build(path=target, encoded=True).path_safe


class EdgeServer(ApiServer):
    """The edge's listener for one app made by ``edge.create_app``: the emulator's listener
    (its connections, body limit and health routes) with the edge's routes."""

    def __init__(self, app: web.Application, *, max_body_bytes: int, **timeouts: float) -> None:
        """``timeouts``: ``request_timeout_s``, ``keepalive_timeout_s`` (``Http1Server``)."""
        Http1Server.__init__(self, **timeouts)  # not the emulator's: no function to invoke
        self.max_body_bytes = max_body_bytes
        self.edge = app[EDGE_KEY]
        self._metrics = app[HTTP_METRICS_KEY]
        own = (*PAGE_ROUTES, API_ROUTE)
        self._routes = {path: route for path, route in own_routes(app).items() if path not in own}

    async def serve(self, connection: ApiConnection, answer: Answer, request: Request) -> None:
        """Answer one request read whole (in a task of its own: its own log context)."""
        method = request.method
        start_request_context(request.request_id.decode("latin-1"))
        started = time.perf_counter()
        self._metrics.in_flight.inc()
        path = request.url.partition(b"?")[0].decode("latin-1")
        label = ORIGIN_ROUTE
        status = 500
        head = method == "HEAD"
        try:
            try:
                path, routed = routed_path(request.url)
                label = self._label(method, routed)
                status, data = await self._answer(
                    connection, request, label, path, head, answer.close
                )
            except Exception as exc:  # CancelledError is a BaseException: it passes
                failure = exc if isinstance(exc, ProblemError) else None
                if failure is None:
                    _LOG.exception("unhandled_error", path=path, method=method)
                    failure = Internal()
                status = failure.status
                data = connection.problem_bytes(
                    failure, request.request_id, path, head=head, close=answer.close
                )
            connection.fill(answer, data)
        finally:
            self._metrics.in_flight.dec()
            self._metrics.observe(method, label, status, time.perf_counter() - started)

    def _label(self, method: str, routed: str) -> str:
        """The route aiohttp's router would pick (its template: the metrics label)."""
        if method in READS:
            if routed in self._routes:
                return routed
            if routed == PAGE_ROUTE:
                return PAGE_ROUTES[0]
            if routed.startswith(_PAGE_PREFIX):
                return PAGE_ROUTES[1]
        return API_ROUTE if routed.startswith(_API_PREFIX) else ORIGIN_ROUTE

    async def _answer(
        self,
        connection: ApiConnection,
        request: Request,
        label: str,
        path: str,
        head: bool,
        close: bool,
    ) -> tuple[int, bytes]:
        request_id, date = request.request_id, self.date
        route = self._routes.get(label)
        if route is not None:
            response = cast(web.Response, await route(cast(web.Request, None)))
            return response.status, self._whole(response, request_id, head, close)
        edge = self.edge
        fields = request.headers()
        raw_target = request.url.decode("utf-8", "surrogateescape")
        peer = peer_of(connection)
        client = peer[0]
        event = viewer_event(client, request.method, raw_target, fields)
        generated = await edge.viewer_request(event)
        if generated is not None:
            status, headers, body = generated_answer(generated)
            return status, answer_bytes(
                status, headers, body, request_id, date, head=head, close=close
            )
        if label in PAGE_ROUTES:
            tail = path[len(_PAGE_PREFIX) :]
            status, headers, body = edge.waiting_page(tail, first_field(fields, "if-none-match"))
            return status, answer_bytes(
                status, headers, body, request_id, date, head=head, close=close
            )
        host = first_field(fields, "host")
        forwarded = forward_headers(
            fields, client, local_host(connection) if host is None else host
        )
        if label == API_ROUTE:
            sent = api_headers(forwarded, f"{client}:{peer[1]}", await edge.origin_header())
            target = edge.api_prefix + raw_target.removeprefix(API_PREFIX)
            got = await edge.forward(True, request.method, target, sent, request.body)
        else:
            target = edge.gateway_prefix + raw_target
            got = await edge.forward(False, request.method, target, forwarded, request.body)
        return got.status, self._proxied(got, request_id, head, close)

    def _proxied(self, got: UpstreamAnswer, request_id: bytes, head: bool, close: bool) -> bytes:
        """The origin's answer as it came (its reason, its ``Date``), the hop-by-hop fields
        and framing aside, as the aiohttp app passes it on."""
        fields = [(name, value) for name, value in got.headers if name.lower() not in HOP_BY_HOP]
        date = first_field(fields, "date")
        data = answer_bytes(
            got.status,
            fields,
            got.body,
            request_id,
            self.date if date is None else date.encode(),
            head=head,
            close=close,
        )
        if got.reason:
            line = status_line(got.status, got.reason)
            if not data.startswith(line):
                data = line + data.partition(b"\r\n")[2]
        return data


def local_host(connection: ApiConnection) -> str:
    """aiohttp's ``request.host`` of a request without a ``Host`` field: the address it
    arrived on."""
    transport = connection.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple):
        return f"[{sockname[0]}]" if len(sockname) == 4 else str(sockname[0])
    return "" if sockname is None else str(sockname)


def peer_of(connection: ApiConnection) -> tuple[str, int]:
    """The viewer's address (taken when it connected: it stays after the viewer left) and
    port (``CloudFront-Viewer-Address``), as aiohttp's app reads them."""
    transport = connection.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    port = int(peer[1]) if isinstance(peer, tuple) and len(peer) >= 2 else 0
    return connection.source_ip, port


def edge_site(
    *, max_body_bytes: int, drain_timeout_s: float
) -> Callable[[web.AppRunner, str | None, int, bool], Http1Site]:
    """What makes ``EdgeServer`` an aiohttp site from the runner, host, port and
    ``reuse_port`` (``serve``'s ``site``): ``runner.cleanup()`` drains it, then the app's
    cleanup closes the upstream connections."""

    def site(runner: web.AppRunner, host: str | None, port: int, reuse_port: bool) -> Http1Site:
        app = runner.app
        make = lambda: EdgeServer(app, max_body_bytes=max_body_bytes)  # noqa: E731
        return Http1Site(
            runner, make, host, port, drain_timeout_s=drain_timeout_s, reuse_port=reuse_port or None
        )

    return site


__all__ = ["EdgeServer", "edge_site", "routed_path"]
