"""The edge stand-in's upstream client against a raw HTTP/1.1 server that answers as told."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from urr_vwr_lambda.local.upstream import Upstream, UpstreamFailed

Answerer = Callable[[bytes], bytes | None]


class RawServer:
    """Reads one request head (and a Content-Length body) at a time and writes ``answer(head)``
    back; ``None`` closes the connection without an answer; ``close_after`` closes it after
    each answer."""

    def __init__(self, answer: Answerer, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append(head + body)
                answer = self.answer(head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[RawServer], asyncio.Future[str]]]:
    servers: list[asyncio.Server] = []

    async def start(raw: RawServer) -> str:
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()
        await server.wait_closed()


def ok(body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_answers_come_whole_on_one_kept_alive_connection(serve):
    raw = RawServer(lambda head: ok(b'{"n":1}', b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"))
    upstream = Upstream(await serve(raw), timeout_s=5)
    try:
        for _ in range(3):
            answer = await upstream.request("GET", "/x?y=1", [("Accept", "*/*")], b"")
            assert (answer.status, answer.reason, answer.body) == (200, "OK", b'{"n":1}')
            assert [v for n, v in answer.headers if n == "Set-Cookie"] == ["a=1", "b=2"]
        posted = await upstream.request("POST", "/p", [("Content-Length", "99")], b'{"a":1}')
        assert posted.status == 200
    finally:
        await upstream.close()
    assert raw.connections == 1
    assert raw.requests[0].startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    # The client frames the body itself: a caller's Content-Length is not sent.
    assert raw.requests[3].count(b"Content-Length") == 1
    assert raw.requests[3].endswith(b'Content-Length: 7\r\n\r\n{"a":1}')


async def test_chunked_interim_and_close_framed_answers(serve):
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"late"),
        ]
    )
    raw = RawServer(lambda head: next(answers))
    upstream = Upstream(await serve(raw), timeout_s=5)
    try:
        assert (await upstream.request("GET", "/", [], b"")).body == b"abcde"
        late = await upstream.request("GET", "/", [], b"")
        assert (late.status, late.body) == (200, b"late")
        assert ("Link", "</a>") not in late.headers
    finally:
        await upstream.close()
    until_close = RawServer(
        lambda head: b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nto the end",
        close_after=True,
    )
    upstream = Upstream(await serve(until_close), timeout_s=5)
    try:
        closed = await upstream.request("GET", "/", [], b"")
        assert (closed.status, closed.reason, closed.body) == (404, "Not Found", b"to the end")
    finally:
        await upstream.close()


async def test_a_connection_the_upstream_closed_is_not_used_again(serve):
    raw = RawServer(lambda head: ok(), close_after=True)
    upstream = Upstream(await serve(raw), timeout_s=5)
    try:
        for _ in range(3):
            assert (await upstream.request("GET", "/", [], b"")).status == 200
            await asyncio.sleep(0.05)
        assert (await upstream.request("POST", "/", [], b"x")).status == 200
    finally:
        await upstream.close()
    assert raw.connections == 4


async def test_a_stale_kept_alive_connection_is_retried_once_for_a_get(serve):
    """The upstream drops a kept-alive connection just as the request goes out: a GET goes
    again on a fresh connection, a POST (it may have been acted on) fails."""
    seen = {"n": 0}

    def answer(head: bytes) -> bytes | None:
        seen["n"] += 1
        return None if seen["n"] in (2, 4) else ok()

    raw = RawServer(answer)
    upstream = Upstream(await serve(raw), timeout_s=5)
    try:
        assert (await upstream.request("GET", "/", [], b"")).status == 200
        assert (await upstream.request("GET", "/", [], b"")).status == 200  # 2 dropped, 3 ok
        with pytest.raises(UpstreamFailed):
            await upstream.request("POST", "/", [], b"x")  # 4 dropped: not sent again
    finally:
        await upstream.close()
    assert seen["n"] == 4


async def test_unanswered_refused_and_unsafe_requests(serve):
    raw = RawServer(lambda head: None if b"/drop" in head else b"")
    upstream = Upstream(await serve(raw), timeout_s=0.3)
    try:
        with pytest.raises(TimeoutError):
            await upstream.request("GET", "/silent", [], b"")
        with pytest.raises(UpstreamFailed):
            await upstream.request("GET", "/drop", [], b"")  # a fresh connection: no retry
        with pytest.raises(ValueError, match="CR or LF"):
            await upstream.request("GET", "/", [("X-A", "1\r\nX-Injected: 1")], b"")
    finally:
        await upstream.close()
    closed = Upstream("http://127.0.0.1:1", timeout_s=1)
    with pytest.raises(UpstreamFailed):
        await closed.request("GET", "/", [], b"")
    with pytest.raises(ValueError, match="http://"):
        Upstream("https://example.com", timeout_s=1)
