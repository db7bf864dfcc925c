"""The proxy's upstream client against real sockets: aiohttp servers and raw TCP ones."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from urr_gateway.upstream import (
    InvalidHeader,
    PoolLimits,
    PoolTimeout,
    UpstreamClient,
    UpstreamProtocolError,
    UpstreamTimeout,
    request_head,
)
from urr_gateway.upstream.deadlines import SWEEP_S

MB = 1024 * 1024
Start = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[TestServer] = []

    async def run(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield run
    for server in servers:
        await server.close()


def limits(**overrides: float) -> PoolLimits:
    values = {
        "limit": 4,
        "connect_timeout_s": 2.0,
        "pool_timeout_s": 2.0,
        "read_timeout_s": 2.0,
        "idle_timeout_s": 30.0,
        **overrides,
    }
    return PoolLimits(**values)  # type: ignore[arg-type]


def app_of(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


async def get(client: UpstreamClient, target: str = "/", method: str = "GET") -> tuple[int, bytes]:
    response = await client.send("up", method, target, CIMultiDict())
    try:
        return response.status, await response.read()
    finally:
        response.close()


async def raw_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_keep_alive_connections_are_reused(start):
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(text=request.path)

    client = UpstreamClient({"up": await start(app_of(handler))}, limits())
    try:
        for index in range(20):
            assert await get(client, f"/n{index}") == (200, f"/n{index}".encode())
        assert len(set(peers)) == 1
        assert client.pool("up").open_connections == 1
        assert client.pool("up").idle_connections == 1
    finally:
        await client.close()


async def test_chunked_bodies_both_ways(start):
    async def handler(request: web.Request) -> web.StreamResponse:
        received = await request.read()
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(3):
            await response.write(received)
        await response.write_eof()
        return response

    async def body() -> AsyncIterator[bytes]:
        for piece in (b"ab", b"cd", b"e" * 100_000):
            yield piece

    client = UpstreamClient({"up": await start(app_of(handler))}, limits())
    try:
        response = await client.send("up", "POST", "/", CIMultiDict(), body())
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert response.content_length is None
        got = b""
        while chunk := await response.read_chunk():
            got += chunk
        assert got == (b"abcd" + b"e" * 100_000) * 3
        # The connection went back to the pool and serves the next request.
        assert await get(client) == (200, b"")
        assert client.pool("up").open_connections == 1
    finally:
        await client.close()


async def test_a_kept_alive_connection_closed_by_the_upstream_is_retried_for_idempotent_requests():
    """The upstream answers one request per connection and drops the next without a byte."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await read_head(reader)  # the next request on this connection: no answer
        writer.close()

    server, url = await raw_server(serve)
    client = UpstreamClient({"up": url}, limits())
    try:
        assert await get(client) == (200, b"ok")
        assert await get(client) == (200, b"ok")  # sent again on a fresh connection
        assert connections == 2
        # A request with a body cannot be replayed: the failure is reported.
        await asyncio.sleep(0.05)

        async def body() -> AsyncIterator[bytes]:
            yield b"x"

        with pytest.raises(UpstreamProtocolError):
            await client.send("up", "POST", "/", CIMultiDict(), body())
    finally:
        await client.close()
        server.close()


async def test_an_answer_framed_by_closing_the_connection_is_read_whole():
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello, ")
        await writer.drain()
        writer.write(b"world")
        writer.close()

    server, url = await raw_server(serve)
    client = UpstreamClient({"up": url}, limits())
    try:
        assert await get(client) == (200, b"hello, world")
        assert client.pool("up").open_connections == 0
    finally:
        await client.close()
        server.close()


async def test_a_head_answer_with_a_length_leaves_the_connection_usable(start):
    peers: list[object] = []

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.Response(body=b"x" * 100)

    client = UpstreamClient({"up": await start(app_of(handler))}, limits())
    try:
        response = await client.send("up", "HEAD", "/", CIMultiDict())
        assert response.content_length == 100
        assert await response.read() == b""
        assert await get(client) == (200, b"x" * 100)
        assert len(set(peers)) == 1
    finally:
        await client.close()


async def test_a_full_pool_makes_the_next_request_wait_then_time_out(start):
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/hold":
            await release.wait()
        return web.Response(text="done")

    client = UpstreamClient(
        {"up": await start(app_of(handler))}, limits(limit=1, pool_timeout_s=0.3)
    )
    try:
        holder = asyncio.create_task(get(client, "/hold"))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            await get(client, "/other")
        assert 0.25 < time.monotonic() - started < 1.5
        # A waiter is served when the connection comes back, in the same connection.
        waiting = asyncio.create_task(get(client, "/other"))
        await asyncio.sleep(0.05)
        release.set()
        assert await holder == (200, b"done")
        assert await waiting == (200, b"done")
        assert client.pool("up").open_connections == 1
    finally:
        release.set()
        await client.close()


async def test_each_upstream_has_its_own_limit(start):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="slow")

    async def fast(request: web.Request) -> web.Response:
        return web.Response(text="fast")

    client = UpstreamClient(
        {"slow": await start(app_of(slow)), "fast": await start(app_of(fast))},
        limits(limit=2, pool_timeout_s=5.0),
    )
    try:
        held = [
            asyncio.create_task(client.send("slow", "GET", "/", CIMultiDict())) for _ in range(4)
        ]
        await asyncio.sleep(0.2)
        assert client.pool("slow").open_connections == 2
        assert client.pool("slow").waiting == 2
        started = time.monotonic()
        response = await client.send("fast", "GET", "/", CIMultiDict())
        assert (response.status, await response.read()) == (200, b"fast")
        assert time.monotonic() - started < 0.5
    finally:
        release.set()
        for answer in await asyncio.gather(*held, return_exceptions=True):
            if not isinstance(answer, BaseException):
                answer.close()
        await client.close()


async def test_no_answer_within_the_read_deadline_times_out(start):
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    client = UpstreamClient({"up": await start(app_of(handler))}, limits(read_timeout_s=0.3))
    try:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await get(client)
        # One coarse sweep expires the waits: never early, at most a sweep (and a busy
        # loop's slack) late.
        assert 0.3 <= time.monotonic() - started < 0.3 + SWEEP_S + 0.25
        # The slot came back: the abandoned connection was closed, not leaked.
        assert client.pool("up").open_connections == 0
        # Nothing waits any more: nothing is left to sweep.
        assert len(client.pool("up").read_deadlines(asyncio.get_running_loop())) == 0
    finally:
        await client.close()


async def test_the_read_deadline_renews_with_each_piece_and_expires_on_silence(start):
    """A slow but steady body is not cut (each wait has its own deadline), one that goes
    silent mid-body is, at its deadline."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1024
        await response.prepare(request)
        for _ in range(4):  # 0.6 s in all, each piece within the 0.3 s deadline
            await response.write(b"p" * 100)
            await asyncio.sleep(0.15)
        await asyncio.sleep(2)  # then silence
        return response

    client = UpstreamClient({"up": await start(app_of(handler))}, limits(read_timeout_s=0.3))
    try:
        response = await client.send("up", "GET", "/", CIMultiDict())
        pieces: list[bytes] = []

        async def read_all() -> None:
            while chunk := await response.read_chunk():
                pieces.append(chunk)

        with pytest.raises(UpstreamTimeout):
            await read_all()
        assert sum(map(len, pieces)) == 400
        response.close()
        assert client.pool("up").open_connections == 0
    finally:
        await client.close()


async def test_reading_pauses_while_the_reader_does_not_keep_up(start):
    written = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse()
        response.content_length = 64 * MB
        await response.prepare(request)
        chunk = b"d" * (256 * 1024)
        for _ in range(256):
            await response.write(chunk)
            written += len(chunk)
        await response.write_eof()
        return response

    client = UpstreamClient({"up": await start(app_of(handler))}, limits())
    try:
        response = await client.send("up", "GET", "/", CIMultiDict())
        total = len(await response.read_chunk())
        await asyncio.sleep(0.5)
        # Socket buffers hold a few MB; without pausing the whole 64 MB would be in memory.
        assert written < 16 * MB, written
        while chunk := await response.read_chunk():
            total += len(chunk)
        assert total == written == 64 * MB
        response.close()
    finally:
        await client.close()


def test_request_heads_refuse_header_injection_and_set_their_own_framing():
    headers = CIMultiDict({"X-A": "1", "Content-Length": "99", "Host": "evil", "Connection": "x"})
    head = request_head("POST", "/p?q=1", "up:80", headers, "Content-Length: 5\r\n")
    assert head == b"POST /p?q=1 HTTP/1.1\r\nHost: up:80\r\nX-A: 1\r\nContent-Length: 5\r\n\r\n"
    for bad in ("a\r\nX-Injected: 1", "a\nb", "a\rb"):
        with pytest.raises(InvalidHeader):
            request_head("GET", "/", "up", CIMultiDict({"X-A": bad}), "")


async def test_an_answer_sent_before_the_whole_body_was_taken_is_returned():
    """The upstream refuses at the headers (413) and closes while the body is still going."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
        )
        await writer.drain()
        writer.close()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(256):  # 16 MB: more than the socket buffers hold
            yield b"b" * (64 * 1024)
            await asyncio.sleep(0)

    server, url = await raw_server(serve)
    client = UpstreamClient({"up": url}, limits())
    try:
        response = await client.send("up", "POST", "/", CIMultiDict(), body())
        assert response.status == 413
        assert await response.read() == b"nope"
        response.close()
        assert client.pool("up").open_connections == 0
    finally:
        await client.close()
        server.close()


async def test_a_waiter_that_gives_up_leaves_the_pool_consistent(start):
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/hold":
            await release.wait()
        return web.Response(text="ok")

    client = UpstreamClient({"up": await start(app_of(handler))}, limits(limit=1))
    pool = client.pool("up")
    try:
        holder = asyncio.create_task(get(client, "/hold"))
        await asyncio.sleep(0.1)
        waiter = asyncio.create_task(get(client, "/x"))
        await asyncio.sleep(0.05)
        assert pool.waiting == 1
        waiter.cancel()  # the client that was waiting went away
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.waiting == 0
        release.set()
        assert await holder == (200, b"ok")
        assert await get(client, "/x") == (200, b"ok")
        assert (pool.open_connections, pool.idle_connections) == (1, 1)
    finally:
        release.set()
        await client.close()


async def test_an_answer_head_equal_to_the_previous_one_is_its_own_copy_and_trailers_stay_out():
    """A connection reuses the previous answer's decoded headers only for a head equal byte
    for byte: each answer gets its own copy (a reader editing it changes no later answer),
    a field that differs in one byte or a different length is read afresh, and a chunked
    answer's trailer fields (parsed after its head) never become part of a kept head."""
    answers = [
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-A: 2\r\nContent-Length: 3\r\n\r\nok!",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\nX-T: 1\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
    ]
    peers = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal peers
        peers += 1
        for answer in answers:
            await read_head(reader)
            writer.write(answer)
            await writer.drain()
        writer.close()  # after the last answer (the client reads it, then the close)
        await writer.wait_closed()

    server, url = await raw_server(serve)
    client = UpstreamClient({"up": url}, limits())
    seen: list[tuple[list[tuple[str, str]], int | None, bytes]] = []
    try:
        for _ in answers:
            response = await client.send("up", "GET", "/", CIMultiDict())
            try:
                body = await response.read()
                seen.append((list(response.headers.items()), response.content_length, body))
                response.headers.popall("X-A", None)  # a reader's edit: this answer's only
                response.headers["X-Edited"] = "1"
            finally:
                response.close()
        assert peers == 1  # one connection: every head after the first could be reused
    finally:
        await client.close()
        server.close()
    one = [("X-A", "1"), ("Content-Length", "2")]
    chunked = [("Transfer-Encoding", "chunked"), ("Trailer", "X-T")]
    assert seen == [
        (one, 2, b"ok"),
        (one, 2, b"ok"),
        (one, 2, b"ok"),
        ([("X-A", "2"), ("Content-Length", "2")], 2, b"ok"),
        ([("X-A", "2"), ("Content-Length", "3")], 3, b"ok!"),
        (chunked, None, b"ok"),
        ([*chunked, ("X-T", "1")], None, b"ok"),
        (chunked, None, b"ok"),
    ]
