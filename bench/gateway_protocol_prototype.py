"""PROTOTYPE (issue 17, benchmark only): the gateway's proxied routes on a protocol-level
HTTP/1.1 server, to measure what aiohttp's server layers cost. Not the gateway's request path.

Measures one claim (issue 17): what is left of the gateway's cost per request is the number
of Python layers, aiohttp's server protocol and its ``web.Request``/``Response`` objects
first. Here an ``asyncio.Protocol`` parses requests with httptools (llhttp, the parser the
upstream client already uses: a public, maintained API with callbacks, where aiohttp's C
parser is a private module that builds aiohttp message objects and a ``StreamReader`` per
request), runs the gateway's own ingress and filter steps on a small request view, proxies
with the lean upstream client and writes the answer as one prebuilt buffer.

Scope of the prototype: body-less requests whose answer has a known length of at most
64 KB (the benchmark's seat-map GET). Anything else is answered 501 and the connection
closed, so it cannot be mistaken for the real request path. It has none of the defences
of the real path (slow clients, header size limits beyond llhttp's own, bodies, streaming).

Run by ``bench/gateway_proxy.py`` as a child process::

    python bench/gateway_protocol_prototype.py PORT    # settings from URR_* as the gateway
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from http.cookies import SimpleCookie
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import httptools
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from urr_common.logs import configure_logging, start_request_context
from urr_common.metrics import HttpMetrics
from urr_common.service import (
    HTTP_METRICS_KEY,
    REQUEST_ID_HEADER,
    new_request_id,
    problem_answer,
    run,
)
from urr_common.settings import load_settings
from urr_gateway.app import PIPELINE_KEY, PROXY_KEY
from urr_gateway.context import RequestFacts
from urr_gateway.filters.base import Step
from urr_gateway.forwarding import X_FORWARDED_PROTO, downstream_response_headers
from urr_gateway.ingress import Ingress
from urr_gateway.proxy import UpstreamProxy
from urr_gateway.responseheaders import clearing_cookie, security_headers
from urr_gateway.server import build_apps
from urr_gateway.settings import GatewaySettings
from urr_gateway.trust import TrustSettings

_ROUTE_LABEL = "/{tail:.*}"
_SMALL = 64 * 1024


class RequestView:
    """What the ingress, the filters and the proxy read of a request, without aiohttp."""

    __slots__ = (
        "_cookies",
        "_state",
        "body_exists",
        "content_length",
        "headers",
        "host",
        "keep_alive",
        "method",
        "path",
        "raw_path",
        "remote",
        "scheme",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        remote: str | None,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        path = raw_path.partition("?")[0]
        self.path = unquote(path) if "%" in path else path
        self.headers = headers
        self.remote = remote
        self.scheme = "http"
        self.host = headers.get("Host", "")
        self.keep_alive = keep_alive
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None else None
        self.body_exists = bool(self.content_length) or "Transfer-Encoding" in headers
        self._state: dict[Any, Any] = {}
        self._cookies: Mapping[str, str] | None = None

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    @property
    def cookies(self) -> Mapping[str, str]:
        if self._cookies is None:
            parsed: SimpleCookie = SimpleCookie()
            parsed.load(self.headers.get("Cookie", ""))
            self._cookies = MappingProxyType({k: m.value for k, m in parsed.items()})
        return self._cookies

    def clone(self, *, rel_url: Any) -> RequestView:
        self.raw_path = rel_url.raw_path_qs
        self.path = rel_url.path
        return self


class ProxiedRoutes:
    """The gateway's pipeline for proxied routes, without aiohttp's server objects."""

    def __init__(
        self,
        ingress: Ingress,
        steps: tuple[Step, ...],
        proxy: UpstreamProxy,
        metrics: HttpMetrics,
        trust: TrustSettings,
    ) -> None:
        self._ingress = ingress
        self._steps = steps
        self._proxy = proxy
        self._metrics = metrics
        self._trust = trust
        self._plain = tuple(security_headers(False, trust.hsts_max_age_s).items())
        self._over_tls = tuple(security_headers(True, trust.hsts_max_age_s).items())
        self._date = ""
        self._date_at = 0

    def _date_header(self) -> str:
        now = int(time.time())
        if now != self._date_at:
            self._date_at = now
            self._date = formatdate(now, usegmt=True)
        return self._date

    async def answer(self, view: RequestView) -> bytes:
        """The whole answer to ``view``, head and body, as bytes."""
        request_id = new_request_id(view)  # type: ignore[arg-type]
        start_request_context(request_id)
        metrics = self._metrics
        started = time.perf_counter()
        metrics.in_flight.inc()
        facts: RequestFacts | None = None
        status = 500
        try:
            try:
                request, facts = self._ingress(view, request_id)  # type: ignore[arg-type]
                for step in self._steps:
                    pending = step(request, facts)
                    if pending is not None:
                        await pending
                if view.body_exists:
                    return self._raw(501, b"prototype: no request bodies")
                answer, _ = await self._proxy.open(request)
                try:
                    length = answer.content_length
                    if length is None or length > _SMALL:
                        return self._raw(501, b"prototype: no streamed answers")
                    body = await answer.read()
                finally:
                    answer.close()
                status = answer.status
                headers = downstream_response_headers(answer.headers)
                return self._render(status, answer.reason, headers, body, facts, request_id)
            except Exception as exc:
                problem = problem_answer(view, exc)  # type: ignore[arg-type]
                if problem is None:
                    raise
                status = problem.status
                headers = CIMultiDict(problem.headers)
                headers["Content-Type"] = problem.content_type
                body = problem.body if isinstance(problem.body, bytes) else b""
                return self._render(status, None, headers, body, facts, request_id)
        finally:
            metrics.in_flight.dec()
            metrics.observe(view.method, _ROUTE_LABEL, status, time.perf_counter() - started)

    def _render(
        self,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        body: bytes,
        facts: RequestFacts | None,
        request_id: str,
    ) -> bytes:
        over_tls = facts is not None and facts.headers.get(X_FORWARDED_PROTO) == "https"
        for name, value in self._over_tls if over_tls else self._plain:
            headers.setdefault(name, value)
        if facts is not None:
            if facts.rate_limit_headers:
                for name, value in facts.rate_limit_headers.items():
                    headers.setdefault(name, value)
            if facts.cookie_refused:
                headers.add(
                    "Set-Cookie", clearing_cookie(self._trust.access_cookie_domain, over_tls)
                )
        headers[REQUEST_ID_HEADER] = request_id
        headers["Content-Length"] = str(len(body))
        headers.setdefault("Date", self._date_header())
        reason = reason or HTTPStatus(status).phrase
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        lines.append("\r\n")
        return "".join(lines).encode("latin-1") + body

    @staticmethod
    def _raw(status: int, text: bytes) -> bytes:
        return (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Length: {len(text)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + text


class GatewayProtocol(asyncio.Protocol):
    """One client connection: parse, answer in order (pipelining), keep alive."""

    def __init__(self, routes: ProxiedRoutes) -> None:
        self._routes = routes
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._queue: deque[RequestView] = deque()
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._task is not None:
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(ProxiedRoutes._raw(400, b"malformed request"))
                self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        parser = self._parser
        view = RequestView(
            parser.get_method().decode("ascii"),
            self._url.decode("latin-1"),
            CIMultiDictProxy(CIMultiDict(self._headers)),
            self._remote,
            parser.should_keep_alive(),
        )
        self._queue.append(view)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())

    def _current_transport(self) -> asyncio.Transport | None:
        return self._transport

    async def _serve(self) -> None:
        queue = self._queue
        routes = self._routes
        try:
            while queue and self._transport is not None:
                view = queue.popleft()
                data = await routes.answer(view)
                transport = self._current_transport()  # the client may have gone meanwhile
                if transport is None:
                    return
                transport.write(data)
                if not view.keep_alive:
                    transport.close()
                    return
        finally:
            self._task = None


def serve(port: int) -> None:
    """The gateway's public app built as ``python -m urr_gateway`` builds it, its clients
    started by aiohttp's runner, the port served by ``GatewayProtocol``."""
    settings = load_settings(GatewaySettings)
    configure_logging(settings.log, service=settings.service_name)

    async def main() -> None:
        apps = build_apps(settings)
        runner = web.AppRunner(apps.public, handle_signals=False, access_log=None)
        await runner.setup()  # runs the app's cleanup_ctx: Redis, upstream client, JWKS
        pipeline = apps.public[PIPELINE_KEY]
        proxy = apps.public[PROXY_KEY]
        if pipeline.steps is None:
            raise SystemExit("every filter must have a step")
        routes = ProxiedRoutes(
            pipeline.ingress,
            pipeline.steps,
            proxy,
            apps.public[HTTP_METRICS_KEY],
            settings.trust,
        )
        server = await asyncio.get_running_loop().create_server(
            lambda: GatewayProtocol(routes), "127.0.0.1", port, backlog=1024
        )
        try:
            await asyncio.Event().wait()
        finally:
            server.close()
            await runner.cleanup()

    run(main, use_uvloop=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
