"""``Http1TestServer``: aiohttp's ``TestServer`` for an app served by a listener on the
connection layer ``urr_common.http1`` (the gateway's, the API Gateway emulator's, the edge
stand-in's), so a test's ``TestClient`` drives the same listener the service runs; and raw
HTTP/1.1 for the tests that attack such a listener (``exchange``, ``MALFORMED_REQUESTS``,
``FUZZ_TOKENS``, ``request_bytes``, ``LoopThread``)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any, cast

import httptools
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from urr_common.http1 import Http1Site


class Http1TestServer(TestServer):
    """``site(runner, host)`` makes the listener's site on a free port."""

    def __init__(
        self,
        app: web.Application,
        site: Callable[[web.AppRunner, str], Http1Site],
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._site = site

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **_: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner()
        await self.runner.setup()
        site = self._site(cast(web.AppRunner, self.runner), self.host)
        await site.start()
        self.port = site.port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")


# --- raw HTTP/1.1 for the tests that attack a listener ----------------------------------------

#: Requests every listener must refuse with a 400 problem (and read nothing after).
MALFORMED_REQUESTS = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET http://[bad/ HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
]

#: Pieces a fuzz of request bytes is made of (a test adds its own paths and fields).
FUZZ_TOKENS = [
    b"GET",
    b"POST",
    b" ",
    b"/",
    b"?",
    b"&",
    b"=",
    b"%",
    b"%zz",
    b"%41",
    b"#",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"\r\n",
    b"\n",
    b":",
    b"Host",
    b"Content-Length",
    b"0",
    b"5",
    b"-1",
    b"Transfer-Encoding",
    b"chunked",
    b"Connection",
    b"close",
    b"\x00",
    b"\xff",
    b"Expect",
    b"100-continue",
    b"X-Request-Id",
    b"\t",
]


def request_bytes(
    method: bytes, target: bytes, fields: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """A request made of fuzzed parts, its body framed by a Content-Length."""
    head = b"%s %s HTTP/1.1\r\n" % (method, target)
    head += b"".join(b"%s: %s\r\n" % field for field in fields)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


class Answers:
    """The answers read from a connection (httptools' response parser): ``status``,
    ``headers`` (by lower name, repeated fields joined), ``body``, ``done``."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.items.append({"headers": {}, "body": b""})

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.items[-1]["headers"]
        key = name.decode().lower()
        headers[key] = f"{headers[key]}, {value.decode()}" if key in headers else value.decode()

    def on_body(self, body: bytes) -> None:
        self.items[-1]["body"] += body

    def on_message_complete(self) -> None:
        self.items[-1]["status"] = self._parser.get_status_code()
        self.items[-1]["done"] = True

    def feed(self, data: bytes) -> None:
        self._parser.feed_data(data)


def exchange(
    port: int, data: bytes, *, want: int = 1, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Send ``data`` to ``127.0.0.1:port``; the answers read until ``want`` are whole or
    the server closes."""
    answers = Answers()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        while sum(1 for item in answers.items if item.get("done")) < want:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            answers.feed(chunk)
    return [item for item in answers.items if item.get("done")]


class LoopThread:
    """An event loop in a daemon thread of its own, where a listener under attack runs while
    a test's blocking sockets talk to it, with a gate its handlers may wait at: while
    ``held`` is set (``hold``), they wait for ``release``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.held: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run ``coro`` on the loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def hold(self) -> None:
        async def hold() -> None:
            self.held = asyncio.Event()

        self.run(hold())

    def release(self) -> None:
        async def release() -> None:
            held, self.held = self.held, None
            if held is not None:
                held.set()

        self.run(release())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
