"""The public protocol listener (``urr_gateway.publicserver``) attacked over raw sockets:
request smuggling shapes, oversized heads, slow clients, pipelining, clients and upstreams
that leave mid-body, and a drain. Every refusal is a 4xx problem+json, reaches no upstream,
and the listener keeps serving others. (Everything the aiohttp server is tested for runs
against this listener too: the end-to-end fixtures are parametrized over both servers.)"""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from urr_common.service import metrics_text
from urr_gateway.publicserver import CLIENT_CLOSED, PUBLIC_MAX_HEADERS, PublicServer

pytestmark = pytest.mark.integration

HEAD_TIMEOUT_S = 0.5
KEEPALIVE_S = 1.5
SEND_TIMEOUT_S = 0.5


@pytest.fixture
def gateway_server() -> str:
    """Only the protocol listener here (the conftest runs both elsewhere)."""
    return "protocol"


@pytest.fixture
async def listener(stack_factory: Any) -> AsyncIterator[tuple[Any, int, PublicServer]]:
    """The stack's app on a second protocol listener with short deadlines."""
    stack = await stack_factory()
    server = PublicServer(
        stack.client.app,
        request_timeout_s=HEAD_TIMEOUT_S,
        keepalive_timeout_s=KEEPALIVE_S,
        send_timeout_s=SEND_TIMEOUT_S,
    )
    port = await server.start("127.0.0.1", 0)
    try:
        yield stack, port, server
    finally:
        await server.close(1.0)


async def exchange(port: int, data: bytes, *, timeout_s: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def statuses(answer: bytes) -> list[int]:
    """The status of every answer in ``answer`` (the next one follows a body directly)."""
    return [int(status) for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]


def problem_code(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/problem+json" in head
    code: str = orjson.loads(body)["code"]
    return code


def get(path: str = "/api/v1/events", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: gw\r\n".encode() + extra + b"\r\n"


@pytest.mark.parametrize(
    "smuggled",
    [
        # Content-Length and Transfer-Encoding together: which one frames the body?
        b"POST /api/v1/events HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/v1/events HTTP/1.1\r\n\r\n",
        # Two different lengths.
        b"POST /api/v1/events HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
        b"Content-Length: 40\r\n\r\nabcd",
        # A chunk size that is not hexadecimal, and one that overflows.
        b"POST /api/v1/events HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabcd\r\n0\r\n\r\n",
        b"POST /api/v1/events HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffff\r\nabcd\r\n0\r\n\r\n",
        # A transfer coding that does not end in chunked, and a bad length.
        b"POST /api/v1/events HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        b"POST /api/v1/events HTTP/1.1\r\nHost: gw\r\nContent-Length: -4\r\n\r\nabcd",
        # A space before the colon, and a bare LF inside a header line.
        b"GET /api/v1/events HTTP/1.1\r\nHost: gw\r\nContent-Length : 4\r\n\r\nabcd",
        b"GET /api/v1/events HTTP/1.1\r\nHost: gw\r\nX-A: 1\nContent-Length: 4\r\n\r\nabcd",
    ],
)
async def test_smuggling_shapes_are_400_and_reach_no_upstream(listener, smuggled):
    stack, port, _ = listener
    answer = await exchange(port, smuggled)
    assert statuses(answer) == [400], answer
    assert problem_code(answer) == "bad_request"
    assert b"Connection: close" in answer
    assert stack.ticket.requests == []


async def test_an_oversized_head_is_431_and_the_listener_serves_on(listener):
    stack, port, _ = listener
    huge = get(extra=b"X-Big: " + b"a" * (64 * 1024) + b"\r\n")
    answer = await exchange(port, huge)
    assert statuses(answer) == [431]
    assert problem_code(answer) == "headers_too_large"
    many = get(extra=b"".join(b"X-%d: 1\r\n" % n for n in range(200)))
    assert statuses(await exchange(port, many)) == [431]
    assert stack.ticket.requests == []
    ok = await exchange(port, get(extra=b"Connection: close\r\n"))
    assert statuses(ok) == [200]


async def test_the_head_read_in_one_callback_per_field_keeps_names_ids_and_limits(listener):
    """One Python callback per header field (``on_header``), names as cached ``istr``s: the
    field limit is exact, names reach the upstream as the client spelt them, the client's
    X-Request-Id (any case, the first of several) is the answer's, and a refusal mid-head
    carries the id read before it, never the previous request's."""
    stack, port, _ = listener
    fields = b"".join(b"X-F%d: v\r\n" % n for n in range(PUBLIC_MAX_HEADERS - 2))
    at_limit = get(extra=fields + b"Connection: close\r\n")
    assert statuses(await exchange(port, at_limit)) == [200]
    over = get(extra=fields + b"X-One-More: 1\r\nConnection: close\r\n")
    assert statuses(await exchange(port, over)) == [431]
    spelt = get(
        extra=b"X-Request-Id: first-1\r\nX-Request-Id: second-2\r\nX-MiXeD-CaSe: 1\r\n"
        b"Connection: close\r\n"
    )
    answer = await exchange(port, spelt)
    assert statuses(answer) == [200]
    assert b"\r\nX-Request-Id: first-1\r\n" in answer
    assert ["X-MiXeD-CaSe", "1"] in stack.ticket.requests[-1]["headers"]
    # A malformed line after the id: the 400 carries the id; a second request's malformed
    # head without one gets a fresh id, not the first request's.
    broken = get(extra=b"X-Request-Id: kept-3\r\nX-A: 1\nX-B: 2\r\n")
    refused = await exchange(port, broken)
    assert statuses(refused) == [400]
    assert b"\r\nX-Request-Id: kept-3\r\n" in refused
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get(extra=b"x-request-id: ok-4\r\n"))
        first = await asyncio.wait_for(reader.readuntil(b"}"), 5.0)
        assert statuses(first) == [200]
        assert b"\r\nX-Request-Id: ok-4\r\n" in first
        writer.write(b"GET / HTTP/1.1\r\nX-A: 1\nX-B: 2\r\n\r\n")
        second = await asyncio.wait_for(read_all(reader), 5.0)
    finally:
        writer.close()
    assert statuses(second) == [400], second
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{32}\r\n", second), second
    too_long = get(extra=b"X-Request-Id: " + b"a" * 129 + b"\r\nX-A: 1\nX-B: 2\r\n")
    fresh = await exchange(port, too_long)
    assert re.search(rb"\r\nX-Request-Id: [0-9a-f]{32}\r\n", fresh), fresh


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """What the server sent until it closed (a reset after the answer keeps the answer)."""
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def test_a_slow_loris_head_is_408_after_the_head_deadline(listener):
    stack, port, _ = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = asyncio.get_running_loop().time()
    answered = asyncio.create_task(read_all(reader))
    writer.write(b"GET /api/v1/events HTTP/1.1\r\nHost: gw\r\n")
    try:
        for _ in range(20):  # one header line every 200 ms, never the end of the head
            await asyncio.sleep(0.2)
            if answered.done() or reader.at_eof():
                break
            writer.write(b"X-Drip: 1\r\n")
        answer = await asyncio.wait_for(answered, 5)
    finally:
        writer.close()
    waited = asyncio.get_running_loop().time() - started
    assert statuses(answer) == [408]
    assert problem_code(answer) == "request_timeout"
    assert waited < HEAD_TIMEOUT_S + 2.5  # the deadline plus the one-second sweep
    assert stack.ticket.requests == []


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(listener):
    _, port, _ = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await asyncio.wait_for(reader.read(), KEEPALIVE_S + 3) == b""
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(listener):
    stack, port, _ = listener
    pipelined = b"".join(
        get(f"/api/v1/events/{n}", b"X-Request-Id: req-%d\r\n" % n) for n in range(5)
    ) + get("/api/v1/events/last", b"Connection: close\r\n")
    answer = await exchange(port, pipelined)
    assert statuses(answer) == [200] * 6
    ids = [line for line in answer.split(b"\r\n") if line.lower().startswith(b"x-request-id:")]
    assert ids[:5] == [b"X-Request-Id: req-%d" % n for n in range(5)]
    assert [seen["path"] for seen in stack.ticket.requests] == [
        *(f"/api/v1/events/{n}" for n in range(5)),
        "/api/v1/events/last",
    ]


async def test_a_malformed_request_behind_good_ones_still_gets_its_400(listener):
    # In one write: the good requests' answers must not close the connection before the
    # refusal of what follows them is written (the refusal is the connection's last).
    stack, port, _ = listener
    pipelined = get("/api/v1/events/1") + get("/api/v1/events/2") + b"GARBAGE / HTTP/1.1\r\n\r\n"
    answer = await exchange(port, pipelined)
    assert statuses(answer) == [200, 200, 400]
    first, _, _ = answer.partition(b"\r\n\r\n")
    assert b"connection: close" not in first.lower()
    assert [seen["path"] for seen in stack.ticket.requests] == [
        "/api/v1/events/1",
        "/api/v1/events/2",
    ]


async def test_a_client_leaving_mid_body_frees_everything(listener):
    stack, port, server = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/v1/events/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 500000\r\n\r\n"
        + b"x" * 100_000
    )
    await writer.drain()
    for _ in range(50):  # until the upstream has the first bytes
        if stack.ticket.upload_chunks:
            break
        await asyncio.sleep(0.05)
    writer.transport.abort()
    for _ in range(50):
        if len(server.connections) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(server.connections) == 0
    # The upstream's pool is usable and the gateway answers the next client.
    assert statuses(await exchange(port, get(extra=b"Connection: close\r\n"))) == [200]
    with contextlib.suppress(ConnectionError):
        await reader.read()


async def test_an_upstream_leaving_mid_body_cuts_the_client(listener):
    _, port, _ = listener
    answer = await exchange(port, get("/api/v1/events/die", b"Connection: close\r\n"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert statuses(head) == [200]
    assert b"Content-Length: 1048576" in head
    assert len(body) < 1024 * 1024  # cut short: the only honest signal once streaming


async def test_a_huge_chunked_upload_streams_in_bounded_memory(stack_factory):
    from urr_gateway.settings import GatewayHttpSettings

    total = 192 * 1024 * 1024
    stack = await stack_factory(http=GatewayHttpSettings(port=0, max_body_bytes=total))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def body() -> AsyncIterator[bytes]:
        piece = b"u" * (1024 * 1024)
        for _ in range(total // len(piece)):
            yield piece

    response = await stack.client.post("/api/v1/events/upload", data=body())
    assert response.status == 200
    assert (await response.json())["received"] == total
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    # Client, gateway and upstream share this process: none of them held the body.
    assert grown_kb < 64 * 1024, grown_kb


async def test_expect_continue_is_answered_when_the_body_is_wanted(listener):
    _, port, _ = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/v1/events/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert statuses(answer) == [200]
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2]) == {"received": 5}


async def test_a_refused_request_is_not_invited_to_send_its_body(listener):
    _, port, _ = listener
    # No such route: refused before the body, so no 100 Continue; the answer closes.
    answer = await exchange(
        port,
        b"POST /api/v1/nowhere HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert statuses(answer) == [404]
    assert b"Connection: close" in answer


async def test_http_1_0_and_upgrades_are_served_then_closed(listener):
    stack, port, _ = listener
    old = await exchange(port, b"GET /api/v1/events/download HTTP/1.0\r\nHost: gw\r\n\r\n")
    head, _, body = old.partition(b"\r\n\r\n")
    assert statuses(head) == [200]
    assert b"Transfer-Encoding" not in head
    assert len(body) == 10 * 1024 * 1024
    upgrade = await exchange(
        port,
        get(extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"not http after this",
    )
    assert statuses(upgrade) == [200]
    assert b"Connection: close" in upgrade
    forwarded = stack.headers_of(stack.ticket.requests[-1])
    assert "upgrade" not in forwarded


async def test_a_drain_lets_the_request_in_flight_finish(listener):
    _, port, server = listener
    answered = asyncio.create_task(exchange(port, get("/api/v1/events/slow?s=0.5")))
    await asyncio.sleep(0.2)
    await server.close(5.0)
    answer = await answered
    assert statuses(answer) == [200]
    assert b"Connection: close" in answer
    with pytest.raises(ConnectionError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_client_that_stops_reading_a_download_is_cut(listener):
    """Attack: ask for 10 MB and read nothing. The answer waits at most the send deadline
    for the client's socket, then the connection is cut and its upstream connection freed."""
    _, port, server = listener
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    writer.transport.pause_reading()  # type: ignore[attr-defined]  # our side reads nothing
    writer.write(get("/api/v1/events/download"))
    await writer.drain()
    for _ in range(60):  # the deadline plus what the kernel buffers took
        await asyncio.sleep(0.1)
        if not server.connections:
            break
    assert not server.connections
    writer.close()
    # The gateway still answers, through the same upstream pool.
    assert statuses(await exchange(port, get(extra=b"Connection: close\r\n"))) == [200]


def requests_counted(text: str, status_class: str) -> float:
    """``urr_http_requests_total`` of the proxied route in ``status_class`` ("4xx": the
    metric counts classes), from the exposition."""
    found = re.findall(
        rf'urr_http_requests_total{{[^}}]*route="/{{tail:\.\*}}"'
        rf'[^}}]*status="{status_class}"[^}}]*}} (\S+)',
        text,
    )
    return sum(float(value) for value in found)


async def test_a_client_leaving_mid_download_is_counted_499_not_500(listener):
    """A hang-up is the client's doing: counted as 499 (nginx's "client closed request", in
    the metric's 4xx class), so an alarm on 5xx does not fire when clients leave."""
    stack, port, server = listener
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/api/v1/events/download"))
    await writer.drain()
    await reader.readexactly(64 * 1024)  # the answer is streaming: its head is out
    writer.transport.abort()
    for _ in range(60):
        await asyncio.sleep(0.05)
        if not server.connections:
            break
    assert not server.connections
    text = metrics_text(stack.client.app)
    assert CLIENT_CLOSED // 100 == 4
    assert requests_counted(text, "4xx") == 1
    assert requests_counted(text, "5xx") == 0
    # The gateway still answers, through the same upstream pool.
    assert statuses(await exchange(port, get(extra=b"Connection: close\r\n"))) == [200]


async def test_an_answer_without_a_length_is_relayed_chunked_or_to_the_close(listener):
    stack, port, _ = listener
    expected = b"".join(bytes([65 + n % 26]) * 10240 for n in range(30))
    async with stack.client.get("/api/v1/events/chunked") as response:
        assert response.status == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await response.read() == expected
    # An HTTP/1.0 client cannot read chunks: the body ends with the connection.
    old = await exchange(port, b"GET /api/v1/events/chunked HTTP/1.0\r\nHost: gw\r\n\r\n")
    head, _, body = old.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert body == expected


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """One answer of a keep-alive connection: status, head, body (by its length)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return statuses(head)[0], head, body


async def test_tokens_remembered_by_the_connection_are_still_revoked_and_bound_to_users(
    listener, revoke_entry_token
):
    """The connection remembers the digests of the tokens it was shown; the same tokens
    on it must still be refused once revoked, and another user's tokens on it are theirs."""
    stack, port, _ = listener
    token_u1 = stack.entry_token("u1", "e1")
    token_u2 = stack.entry_token("u2", "e1")

    def seats(access: str, entry: str) -> bytes:
        extra = f"Authorization: Bearer {access}\r\nx-queue-entry-token: {entry}\r\n"
        return get("/api/v1/seats/e1", extra.encode())

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):  # the second time from the connection's digests
            writer.write(seats(stack.access_token("u1"), token_u1))
            assert (await read_answer(reader))[0] == 200
        # u1's access token with u2's entry token, then u2's own: each token its own digest.
        writer.write(seats(stack.access_token("u1"), token_u2))
        status, head, body = await read_answer(reader)
        assert (status, problem_code(head + b"\r\n\r\n" + body)) == (
            403,
            "entry_token_wrong_user",
        )
        writer.write(seats(stack.access_token("u2"), token_u2))
        assert (await read_answer(reader))[0] == 200
        assert [stack.asserted(seen).user_id for seen in stack.ticket.requests] == [
            "u1",
            "u1",
            "u2",
        ]
        await revoke_entry_token("u1", token_u1)
        writer.write(seats(stack.access_token("u1"), token_u1))
        status, head, body = await read_answer(reader)
        assert status == 403
        assert orjson.loads(body)["reason"] == "revoked"
        assert len(stack.ticket.requests) == 3
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def forged(token: str) -> str:
    """``token`` with one character of its signature changed: as long, well formed, and
    equal to the real one in every other byte, but not signed by the issuer."""
    head, payload, signature = token.split(".")
    changed = "A" if signature[10] != "A" else "B"
    return f"{head}.{payload}.{signature[:10]}{changed}{signature[11:]}"


async def test_a_head_kept_by_the_connection_never_vouches_for_another_cookie_or_token(listener):
    """The connection reuses its previous head's headers only when every field is equal byte
    for byte, and every filter still decides on every request. On one keep-alive connection,
    after the same valid request twice: a forged access cookie (one byte off) is refused and
    cleared, a forged entry token and another user's are refused, the valid head is served
    again, and only the valid requests reach the upstream, each as its own user."""
    stack, port, _ = listener
    access, entry = stack.access_token("u1"), stack.entry_token("u1", "e1")

    def seats(cookie: str, token: str) -> bytes:
        extra = f"Cookie: access_token={cookie}\r\nx-queue-entry-token: {token}\r\n"
        return get("/api/v1/seats/e1", extra.encode())

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def ask(cookie: str, token: str) -> tuple[int, bytes, bytes]:
            writer.write(seats(cookie, token))
            return await read_answer(reader)

        for _ in range(2):
            assert (await ask(access, entry))[0] == 200
        status, head, body = await ask(forged(access), entry)
        assert (status, problem_code(head + b"\r\n\r\n" + body)) == (401, "login_required")
        assert b"Set-Cookie: access_token=" in head  # the refused cookie is cleared
        for token, code in (
            (forged(entry), "entry_token_invalid"),
            (stack.entry_token("u2", "e1"), "entry_token_wrong_user"),
        ):
            status, head, body = await ask(access, token)
            assert (status, problem_code(head + b"\r\n\r\n" + body)) == (403, code)
        assert (await ask(access, entry))[0] == 200
        status, head, _ = await ask(forged(access), entry)  # after a valid head again
        assert status == 401
        assert [stack.asserted(seen).user_id for seen in stack.ticket.requests] == ["u1"] * 3
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
