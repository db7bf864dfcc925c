"""The floor rows of ``gateway_proxy.py``: what a Python proxy on this machine costs with
nothing of the gateway in it, and the gateway with nothing but its filters taken out.

``serve_raw_proxy``: the smallest HTTP/1.1 proxy on uvloop that still does the work of one:
an ``asyncio.Protocol`` server parsing the client's requests with ``httptools`` (llhttp, the
C parser the gateway's ``http1`` and upstream client use), a pool of keep-alive upstream
connections parsed the same way, the request forwarded as a fresh ``GET`` head and the
upstream's status, ``Content-Type`` and body answered with a length. No coroutine, task or
future anywhere: every step is a protocol callback. Nothing is checked, no header rule, no
metric, no log context: so the gap between it and the gateway's unfiltered row is what the
gateway's server and upstream client cost on top of Python itself, and the gap between the
unfiltered and the full gateway is what the filters cost.

``serve_unfiltered_gateway``: ``python -m urr_gateway`` exactly as deployed (protocol server,
ingress, route matching, proxy with its header rules and identity assertion, upstream client,
metrics, answer headers) but with the pipeline's filter steps left out.

Both are run by ``gateway_proxy.py`` as child processes (``--serve-raw-proxy PORT UPSTREAM``;
the unfiltered gateway through ``python bench/gateway_floor.py`` with the gateway's own
environment).
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from email.utils import formatdate
from urllib.parse import urlsplit

import httptools


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the upstream; answers one client request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: _Client | None = None
        self.body: list[bytes] = []
        self.content_type = b"application/octet-stream"
        self._name = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None:
            self.client.answer(502, b"text/plain", b"upstream closed")

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.content_type = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        body, self.body = b"".join(self.body), []
        status = self.parser.get_status_code()
        if self.parser.should_keep_alive():
            self.pool.idle.append(self)
        elif self.transport is not None:
            self.transport.close()
        if client is not None:
            client.answer(status, self.content_type, body)


class _Pool:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.host_header = parts.netloc.encode()
        self.idle: deque[_Upstream] = deque()
        self.loop = asyncio.get_running_loop()

    def forward(self, client: _Client, method: bytes, target: bytes) -> None:
        head = b"%b %b HTTP/1.1\r\nHost: %b\r\n\r\n" % (method, target, self.host_header)
        while self.idle:
            connection = self.idle.pop()
            if connection.transport is not None:
                connection.client = client
                connection.transport.write(head)
                return
        self.loop.create_task(self._connect(client, head))

    async def _connect(self, client: _Client, head: bytes) -> None:
        try:
            transport, connection = await self.loop.create_connection(
                lambda: _Upstream(self), self.host, self.port
            )
        except OSError:
            client.answer(502, b"text/plain", b"upstream refused")
            return
        connection.client = client
        transport.write(head)


class _Client(asyncio.Protocol):
    """One client connection: requests answered in order, one upstream call at a time."""

    def __init__(self, pool: _Pool, clock: _Clock) -> None:
        self.pool = pool
        self.clock = clock
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.waiting: deque[tuple[bytes, bytes, bool]] = deque()
        self.busy = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        parser = self.parser
        self.waiting.append((parser.get_method(), self.url, parser.should_keep_alive()))
        if not self.busy:
            self._next()

    def _next(self) -> None:
        method, target, keep_alive = self.waiting.popleft()
        self.busy = True
        self.close_after = not keep_alive
        self.pool.forward(self, method, target)

    def answer(self, status: int, content_type: bytes, body: bytes) -> None:
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        transport.write(
            b"HTTP/1.1 %d OK\r\nContent-Type: %b\r\nContent-Length: %d\r\nDate: %b\r\n\r\n%b"
            % (status, content_type, len(body), self.clock.date, body)
        )
        if self.close_after:
            transport.close()
        elif self.waiting:
            self._next()


class _Clock:
    """The Date header, refreshed once a second (as every server does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.date = b""
        self.tick()

    def tick(self) -> None:
        self.date = formatdate(usegmt=True).encode()
        self.loop.call_later(1.0, self.tick)


def serve_raw_proxy(port: int, upstream: str) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = _Pool(upstream)
        clock = _Clock(loop)
        server = await loop.create_server(
            lambda: _Client(pool, clock), "127.0.0.1", port, backlog=4096
        )
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def serve_unfiltered_gateway() -> None:
    """``python -m urr_gateway`` with the pipeline's filter steps removed (one worker)."""
    from urr_gateway import publicserver
    from urr_gateway.__main__ import main

    original = publicserver.PublicServer.__init__

    def without_filters(self: publicserver.PublicServer, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        self._steps = ()

    publicserver.PublicServer.__init__ = without_filters  # type: ignore[method-assign]
    main()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-raw-proxy":
        serve_raw_proxy(int(sys.argv[2]), sys.argv[3])
    else:
        serve_unfiltered_gateway()
