"""The check API's own listener (``urr_gateway.checkserver``) attacked over raw sockets:
malformed HTTP, oversized heads and bodies, slow clients, pipelining, forged credentials.
Every refusal is a 4xx problem+json and leaves Redis untouched."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from redis.asyncio import Redis

from urr_devstack.procs import RedisServer
from urr_gateway import checkserver
from urr_gateway.checkapi import CHECK_PATH, CheckService
from urr_gateway.checkserver import MAX_HEAD_BYTES, CheckServer
from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter, window_key
from urr_gateway.ratelimit.keys import check_api_subject

pytestmark = pytest.mark.integration

SECRET = "checkserver-test-secret-0123456789"
AUTH = f"Authorization: Bearer {SECRET}\r\n".encode()
BODY = orjson.dumps({"key": "tenant-1", "category": "auth", "cost": 1})


@dataclass
class Listener:
    port: int
    server: CheckServer


@pytest.fixture
async def listener(redis: Redis) -> AsyncIterator[Listener]:
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(budget_ms=500))
    service = CheckService(limiter, CollectorRegistry(), callers={"checker": SecretStr(SECRET)})
    server = CheckServer(service, request_timeout_s=0.5, keepalive_timeout_s=1.5)
    port = await server.start("127.0.0.1", 0)
    try:
        yield Listener(port, server)
    finally:
        await server.close(1.0)
        await limiter.aclose()


def request(
    body: bytes = BODY,
    *,
    method: bytes = b"POST",
    path: bytes = CHECK_PATH.encode(),
    auth: bytes = AUTH,
    extra: bytes = b"",
    version: bytes = b"HTTP/1.1",
) -> bytes:
    return (
        method + b" " + path + b" " + version + b"\r\nHost: x\r\n" + auth
        + b"Content-Type: application/json\r\n" + extra
        + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = orjson.loads(self.body)
        assert isinstance(value, dict)
        return value


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    return Answer(int(lines[0].split()[1]), headers, body)


async def exchange(port: int, raw: bytes, answers: int = 1) -> list[Answer]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return [await read_answer(reader) for _ in range(answers)]
    finally:
        writer.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    """The server closed (or half-closed) the connection: EOF within a few seconds."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


def assert_problem(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert (body["status"], body["code"]) == (status, code)
    assert answer.headers["x-request-id"]


async def test_a_check_is_answered_with_the_contract_and_keep_alive(
    listener: Listener, redis: Redis
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    for remaining in (19, 18):
        writer.write(request(extra=b"X-Request-Id: req-1\r\n"))
        answer = await read_answer(reader)
        assert answer.status == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["x-request-id"] == "req-1"
        assert "date" in answer.headers
        contract = answer.json()
        # The window started with the first check; the second comes a moment later.
        assert 59_000 <= contract.pop("reset_ms") <= 60_000  # type: ignore[operator]
        assert contract == {
            "allowed": True,
            "limit": 20,
            "remaining": remaining,
            "retry_after_ms": 0,
            "degraded": False,
        }
    writer.close()


async def test_pipelined_requests_are_answered_in_order(listener: Listener) -> None:
    # A valid check, a refusal decided before the body, a check, an invalid body: in one write.
    raw = (
        request(orjson.dumps({"key": "a", "category": "auth"}))
        + request(path=b"/elsewhere")
        + request(orjson.dumps({"key": "a", "category": "auth", "cost": 2}))
        + request(b'{"key": 1}')
    )
    answers = await exchange(listener.port, raw, answers=4)
    assert [a.status for a in answers] == [200, 404, 200, 422]
    assert [answers[0].json()["remaining"], answers[2].json()["remaining"]] == [19, 17]


async def test_many_pipelined_requests_are_all_answered_in_order(listener: Listener) -> None:
    bodies = [
        orjson.dumps({"key": f"k{i}", "category": "general", "cost": 1 + i % 3}) for i in range(300)
    ]
    answers = await exchange(listener.port, b"".join(request(b) for b in bodies), answers=300)
    assert all(a.status == 200 for a in answers)
    ids = {a.headers["x-request-id"] for a in answers}
    assert len(ids) == 300
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # Each key was asked once: its remaining tells which request the answer belongs to.
    assert [a.json()["remaining"] for a in answers] == [100 - (1 + i % 3) for i in range(300)]


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (b"", 401),
        (b"Authorization: Bearer wrong-secret-0123456789abcdef\r\n", 401),
        (b"Authorization: Basic " + SECRET.encode() + b"\r\n", 401),
        (b"Authorization: Bearer\r\n", 401),
        (b"Authorization: Bearer " + SECRET[:-1].encode() + b"\r\n", 401),
        (b"Authorization: Bearer " + SECRET.encode() + b"x\r\n", 401),
        (b"Authorization: bearer " + SECRET.encode() + b"\r\n", 200),
    ],
)
async def test_the_caller_must_prove_itself_before_anything_else(
    listener: Listener, redis: Redis, auth: bytes, expected: int
) -> None:
    # Unknown path, wrong method and a huge body: the credential is still what is refused.
    for raw in (
        request(auth=auth),
        request(auth=auth, path=b"/nope"),
        request(auth=auth, method=b"GET", body=b""),
    ):
        (answer,) = await exchange(listener.port, raw)
        if expected == 401:
            assert_problem(answer, 401, "service_credential_required")
            assert answer.headers["www-authenticate"] == 'Bearer realm="urr-internal"'
    if expected == 401:
        assert await redis.dbsize() == 0


async def test_a_connection_that_proved_a_caller_cannot_then_pass_a_forged_one(
    listener: Listener, redis: Redis
) -> None:
    """The listener remembers the credential a connection proved a caller with (to skip the
    second proof of the same bytes): a later request on that connection with another, a
    forged or no credential is refused all the same, pipelined or one by one, and decides
    nothing; the proven one keeps working."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(request())
        assert (await read_answer(reader)).status == 200
        forged = (
            b"Authorization: Bearer " + SECRET.encode()[:-1] + b"X\r\n",
            b"Authorization: Bearer " + SECRET.encode() + b"0\r\n",
            b"Authorization: bearer  \r\n",
            b"",
        )
        writer.write(b"".join(request(auth=auth) for auth in forged))
        for _ in forged:
            assert_problem(await read_answer(reader), 401, "service_credential_required")
        writer.write(request())
        answer = await read_answer(reader)
        assert answer.status == 200
        assert answer.json()["remaining"] == 18  # two decisions in all
    finally:
        writer.close()


async def test_a_forged_credential_with_a_large_body_is_refused_unread(
    listener: Listener, redis: Redis
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(
        b"POST " + CHECK_PATH.encode() + b" HTTP/1.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000\r\n\r\n" + b"x" * 1000
    )
    assert_problem(await read_answer(reader), 401, "service_credential_required")
    assert await closed(reader)
    writer.close()
    assert await redis.dbsize() == 0


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (request(path=b"/internal/v1/ratelimit/check2"), 404, "not_found"),
        (request(path=b"/internal/v1/ratelimit/%63heck"), 404, "not_found"),
        (request(method=b"GET", body=b""), 405, "method_not_allowed"),
        (request(method=b"PUT"), 405, "method_not_allowed"),
        (request(extra=b"Content-Type: text/plain\r\n").replace(
            b"Content-Type: application/json\r\n", b"", 1), 415, "unsupported_media_type"),
        (request(b"{"), 400, "malformed_json"),
        (request(b"[1]"), 400, "malformed_json"),
        (request(b'{"key":"k","category":"auth","cost":true}'), 422, "validation_failed"),
        (request(b'{"key":"k","category":"nope"}'), 422, "unknown_category"),
        (request(b'{"key":"k","category":"auth","cost":21}'), 422, "cost_exceeds_limit"),
        (request(b'{"key":"' + b"x" * 5000 + b'"}'), 413, "payload_too_large"),
    ],
)  # fmt: skip
async def test_bad_requests_are_problems_that_change_nothing(
    listener: Listener, redis: Redis, raw: bytes, status: int, code: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(raw)
    answer = await read_answer(reader)
    assert_problem(answer, status, code)
    if status == 405:
        assert answer.headers["allow"] == "POST"
    # The connection stays usable: the refused body was read (or there was none).
    writer.write(request())
    assert (await read_answer(reader)).status == 200
    writer.close()
    assert await redis.dbsize() == 1  # only the valid check after it counted


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (b"POST /x HTTP/1.1\r\nBad Header\r\n\r\n", 400, "bad_request"),
        (b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "bad_request"),
        (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "bad_request"),
        (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400,
         "bad_request"),
        (b"GET /" + b"a" * (2 * MAX_HEAD_BYTES) + b" HTTP/1.1\r\n\r\n", 431, "headers_too_large"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10), 431, "headers_too_large"),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 431, "headers_too_large"),
    ],
)  # fmt: skip
async def test_unreadable_http_is_refused_and_the_connection_closed(
    listener: Listener, redis: Redis, raw: bytes, status: int, code: str
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(raw)
    assert_problem(await read_answer(reader), status, code)
    assert await closed(reader)
    writer.close()
    assert await redis.dbsize() == 0


async def test_header_fields_count_to_the_limit_and_the_first_of_a_name_wins(
    listener: Listener,
) -> None:
    # The listener reads fields in one ``on_header`` of its own (not the base's plus
    # ``header``): the field limit, the request id and first-wins, whatever the case.
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    named = b"X-REQUEST-ID: first\r\nx-request-id: second\r\nCONTENT-TYPE: text/plain\r\n"
    # request() sends 4 fields of its own: 4 + 3 + 57 = MAX_HEADERS (64).
    writer.write(request(extra=named + b"X-A: b\r\n" * 57))
    answer = await read_answer(reader)
    assert answer.status == 200, answer
    assert answer.headers["x-request-id"] == "first"
    writer.write(request(extra=named + b"X-A: b\r\n" * 58))
    assert_problem(await read_answer(reader), 431, "headers_too_large")
    assert await closed(reader)
    writer.close()


async def test_a_head_arriving_byte_by_byte_beyond_the_limit_is_refused(
    listener: Listener,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"POST / HTTP/1.1\r\nX: ")
    for _ in range(MAX_HEAD_BYTES // 4096 + 2):
        writer.write(b"a" * 4096)
        await writer.drain()
        await asyncio.sleep(0.01)
    assert_problem(await read_answer(reader), 431, "headers_too_large")
    writer.close()


async def test_chunked_bodies_are_read_and_limited(listener: Listener, redis: Redis) -> None:
    head = (
        b"POST " + CHECK_PATH.encode() + b" HTTP/1.1\r\n" + AUTH
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )  # fmt: skip
    half = len(BODY) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half,
        BODY[:half],
        len(BODY) - half,
        BODY[half:],
    )
    (answer,) = await exchange(listener.port, head + chunked)
    assert answer.status == 200
    big = b"".join(b"1000\r\n" + b"x" * 4096 + b"\r\n" for _ in range(3)) + b"0\r\n\r\n"
    (answer,) = await exchange(listener.port, head + big)
    assert_problem(answer, 413, "payload_too_large")
    # Beyond what is read and dropped: answered at once and closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(head + b"".join(b"4000\r\n" + b"x" * 16384 + b"\r\n" for _ in range(6)))
    assert_problem(await read_answer(reader), 413, "payload_too_large")
    assert await closed(reader)
    writer.close()
    assert await redis.dbsize() == 1


async def test_a_slow_client_gets_408_and_an_idle_one_is_closed(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(request()[:40])  # and never the rest (request timeout 0.5 s)
    answer = await asyncio.wait_for(read_answer(reader), 5)
    assert_problem(answer, 408, "request_timeout")
    assert await closed(reader)
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(request())
    assert (await read_answer(reader)).status == 200
    started = asyncio.get_running_loop().time()
    assert await closed(reader)  # keep-alive timeout 1.5 s, one sweep a second
    assert 1.0 <= asyncio.get_running_loop().time() - started <= 4.0
    writer.close()


async def test_http_1_0_and_connection_close_are_closed_after_the_answer(
    listener: Listener,
) -> None:
    for raw in (request(version=b"HTTP/1.0"), request(extra=b"Connection: close\r\n")):
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(raw)
        answer = await read_answer(reader)
        assert answer.status == 200
        assert answer.headers["connection"] == "close"
        assert await closed(reader)
        writer.close()


async def test_nothing_after_a_closing_request_is_decided(listener: Listener, redis: Redis) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(request(extra=b"Connection: close\r\n") + request() + request())
    answer = await read_answer(reader)
    assert (answer.status, answer.json()["remaining"]) == (200, 19)
    assert await closed(reader)
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(request())
    assert (await read_answer(reader)).json()["remaining"] == 18  # the two were not counted
    writer.close()


async def test_head_and_expect_continue(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(request(method=b"HEAD", body=b""))
    answer = await read_answer(reader, head_only=True)
    assert answer.status == 405
    # No body followed the HEAD answer: the next answer starts right after its head.
    head = request(extra=b"Expect: 100-continue\r\n")
    writer.write(head[: -len(BODY)])
    assert (
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(BODY)
    assert (await read_answer(reader)).status == 200
    writer.close()


async def test_each_pipelined_request_is_answered_by_its_own_method(listener: Listener) -> None:
    """The listener keeps the method it read in the head for the answer (one parser call
    fewer): pipelined in one write, a HEAD after a POST and a POST after a HEAD (and after an
    upgrade refusal's method) are each answered as their own method asks, with or without
    a body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(request() + request(method=b"HEAD", body=b"") + request())
        first = await read_answer(reader)
        assert first.status == 200
        head = await read_answer(reader, head_only=True)
        assert head.status == 405
        assert int(head.headers["content-length"]) > 0  # the length of the body not sent
        last = await read_answer(reader)  # right after the HEAD's head: no body in between
        assert (last.status, last.json()["remaining"]) == (200, 18)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (CHECK_PATH.encode(), 200),
        (CHECK_PATH.encode() + b"?trace=1", 200),
        (CHECK_PATH.encode() + b"?", 200),
        (CHECK_PATH.encode() + b"/", 404),
        (CHECK_PATH.encode()[:-1], 404),
        (CHECK_PATH.upper().encode(), 404),
        (b"/health/live", 404),
    ],
)
async def test_the_path_is_compared_as_sent_with_and_without_a_query(
    listener: Listener, redis: Redis, path: bytes, status: int
) -> None:
    """The check path sent plainly is compared as bytes (no split, no decoding), every other
    one as before: the query is not part of the path, nothing else is. The credential is
    asked for every path but ``/health/*`` (the aiohttp app's one exemption)."""
    (answer,) = await exchange(listener.port, request(path=path))
    assert answer.status == status, answer
    (unproven,) = await exchange(listener.port, request(path=path, auth=b""))
    if path.startswith(b"/health/"):
        assert_problem(unproven, 404, "not_found")
    else:
        assert_problem(unproven, 401, "service_credential_required")


async def test_closing_lets_answers_owed_be_written(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(budget_ms=500))
    server = CheckServer(CheckService(limiter, CollectorRegistry()))
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request() * 3)
    await asyncio.sleep(0)
    closing = asyncio.create_task(server.close(5.0))
    answers = [await read_answer(reader) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    assert await closed(reader)
    assert await closed(idle_reader)
    await closing
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    idle_writer.close()
    await limiter.aclose()


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

#: Pieces an attacker would combine: request lines, headers, framing, bodies.
fragments = st.sampled_from(
    [
        b"POST ", b"GET ", b"HEAD ", CHECK_PATH.encode(), b"/", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n",
        b"HTTP/2\r\n", AUTH, b"Authorization: Bearer x\r\n", b"Content-Type: application/json\r\n",
        b"Content-Length: 5\r\n", b"Content-Length: 99999\r\n", b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"\r\n", b"\n", b"\x00", b"\xff",
        b"5\r\nhello\r\n0\r\n\r\n", BODY, b"{", b":", b" ",
    ]
)  # fmt: skip
raw_requests = st.one_of(
    st.lists(fragments, max_size=12).map(b"".join),
    st.binary(max_size=300),
    st.builds(lambda body: request(body), st.binary(max_size=200)),
)


@FUZZ
@given(raw=raw_requests)
async def test_fuzzed_bytes_get_a_problem_or_nothing_and_never_a_5xx(
    listener: Listener, redis: Redis, raw: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(raw)
    writer.write_eof()
    try:
        while True:
            try:
                answer = await read_answer(reader)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                break
            if answer.status == 100:
                continue
            assert answer.status < 500, answer
            if answer.status != 200:
                body = answer.json()
                assert body["status"] == answer.status
                assert isinstance(body["code"], str)
    finally:
        writer.close()
    # Only a complete, valid, credentialed check may count.
    if BODY not in raw or AUTH not in raw:
        assert await redis.dbsize() == 0


async def test_answers_decided_at_once_and_by_redis_keep_their_order(
    listener: Listener, redis: Redis
) -> None:
    """A key over its limit is answered from the deny cache inside the read (no Redis);
    pipelined between requests that wait for Redis, every answer still comes in order."""
    hot = orjson.dumps({"key": "hot", "category": "auth", "cost": 20})
    assert (await exchange(listener.port, request(hot)))[0].json()["remaining"] == 0
    over = orjson.dumps({"key": "hot", "category": "auth", "cost": 1})
    assert (await exchange(listener.port, request(over)))[0].status == 200  # refused: cached
    raw = b"".join(
        request(over if i % 2 else orjson.dumps({"key": f"cold{i}", "category": "auth"}))
        for i in range(40)
    )
    answers = await exchange(listener.port, raw, answers=40)
    assert [a.json()["allowed"] for a in answers] == [i % 2 == 0 for i in range(40)]
    assert all(a.json()["remaining"] == 19 for a in answers[::2])
    # The 20 of the first request; the refusals added nothing.
    assert await redis.zcard(window_key(check_api_subject("hot"), "auth", 60)) == 20


async def test_bad_legacy_fields_are_422_and_change_nothing(
    listener: Listener, redis: Redis
) -> None:
    raw = request(orjson.dumps({"key": "k-bad", "category": "nope"})) + request(
        orjson.dumps({"key": "k-bad", "category": "auth", "cost": 21})
    )
    unknown, too_costly = await exchange(listener.port, raw, answers=2)
    assert_problem(unknown, 422, "unknown_category")
    assert_problem(too_costly, 422, "cost_exceeds_limit")
    assert await redis.dbsize() == 0


async def test_a_redis_outage_is_answered_by_the_failure_policy(
    redis_url: str, restart_redis: RedisServer
) -> None:
    """Redis gone: each check follows its category's failure policy (general: open), then the
    breaker answers at once; never a 5xx."""
    client = Redis.from_url(redis_url, socket_timeout=5)
    limiter = SlidingWindowLimiter(client, RateLimitSettings(budget_ms=50, breaker_failures=2))
    service = CheckService(limiter, CollectorRegistry(), callers={"checker": SecretStr(SECRET)})
    server = CheckServer(service)
    port = await server.start("127.0.0.1", 0)
    try:
        assert await limiter.prepare()
        restart_redis.stop()
        body = orjson.dumps({"key": "k-out", "category": "general"})
        answers = await exchange(port, request(body) * 5, answers=5)
        assert {a.status for a in answers} == {200}
        assert {(a.json()["allowed"], a.json()["degraded"]) for a in answers} == {(True, True)}
    finally:
        await server.close(1.0)
        await limiter.aclose()
        await client.aclose()


@pytest.mark.interpreted  # patches a compiled class
async def test_an_unexpected_limiter_error_is_a_logged_500_and_the_connection_serves_on(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = listener.server.service.limiter

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("boom")

    with monkeypatch.context() as patched:
        patched.setattr(limiter, "_conclude", broken)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(request(orjson.dumps({"key": "k-500", "category": "auth"})))
        assert_problem(await read_answer(reader), 500, "internal_error")
    writer.write(request(orjson.dumps({"key": "k-500b", "category": "auth"})))
    assert (await read_answer(reader)).status == 200
    writer.close()


# --- plain checks' heads taken without the parser (``CheckServer.heads``) --------------------


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the requests the parser began (httptools binds the callbacks when a connection
    is made, so this counts on connections opened after the fixture)."""
    began = [0]
    original = checkserver._Connection.on_message_begin

    def counted(self: checkserver._Connection) -> None:
        began[0] += 1
        original(self)

    monkeypatch.setattr(checkserver._Connection, "on_message_begin", counted)
    return began


def check(key: str, cost: int = 1) -> bytes:
    return request(orjson.dumps({"key": key, "category": "auth", "cost": cost}))


@pytest.mark.interpreted  # patches the compiled checkserver._Connection
async def test_a_plain_checks_head_is_read_once_and_then_taken_without_the_parser(
    listener: Listener, redis: Redis, parsed: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(check("k-1"))
        assert (await read_answer(reader)).json()["remaining"] == 19
        head, _, body = check("k-1").partition(b"\r\n\r\n")
        assert listener.server.heads == {head + b"\r\n\r\n": (len(body), AUTH[15:-2])}
        assert parsed[0] == 1
        for remaining in range(18, 13, -1):
            writer.write(check("k-1"))
            answer = await read_answer(reader)
            assert (answer.status, answer.json()["remaining"]) == (200, remaining)
            assert len(answer.headers["x-request-id"]) == 32
        # Another body of the same length under the same head: its own key.
        writer.write(check("k-2"))
        assert (await read_answer(reader)).json()["remaining"] == 19
        # Pipelined in one write, and split anywhere over several: each answered, in order.
        writer.write(check("k-1") * 3)
        assert [(await read_answer(reader)).json()["remaining"] for _ in range(3)] == [13, 12, 11]
        raw = check("k-1") * 2
        for cut in (5, len(raw) // 2 - 3, len(raw) // 2 + 7):
            writer.write(raw[:cut])
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(raw[cut:])
            assert [(await read_answer(reader)).status for _ in range(2)] == [200, 200]
        assert parsed[0] <= 1 + 2 * 3  # only the split reads went to the parser
    finally:
        writer.close()
    assert await redis.zcard(window_key(check_api_subject("k-1"), "auth", 60)) == 15


@pytest.mark.interpreted  # patches the compiled checkserver._Connection
async def test_a_known_head_on_a_connection_that_proved_nothing_goes_through_the_check(
    redis: Redis, parsed: list[int]
) -> None:
    """The heads are the listener's, the credential each connection's: a head learnt on one
    connection is taken on trust only by a connection that proved its credential itself, so
    another caller's head (another valid secret) or a forged one is checked by the parser's
    path, and a refused head is never learnt."""
    other = "checkserver-other-secret-0123456789"
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(budget_ms=500))
    service = CheckService(
        limiter,
        CollectorRegistry(),
        callers={"checker": SecretStr(SECRET), "other": SecretStr(other)},
    )
    server = CheckServer(service)
    port = await server.start("127.0.0.1", 0)
    try:
        assert (await exchange(port, check("k-a")))[0].status == 200
        assert len(server.heads) == 1
        # A fresh connection with the same bytes: parsed and checked, then taken on trust.
        began = parsed[0]
        answers = await exchange(port, check("k-a"))
        assert answers[0].status == 200
        assert parsed[0] == began + 1
        # The other caller's head on a connection that proved the first: checked again.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        other_auth = f"Authorization: Bearer {other}\r\n".encode()
        other_check = request(orjson.dumps({"key": "k-a", "category": "auth"}), auth=other_auth)
        writer.write(check("k-a"))
        assert (await read_answer(reader)).status == 200
        assert (await exchange(port, other_check))[0].status == 200
        assert len(server.heads) == 2
        began = parsed[0]
        writer.write(other_check)
        assert (await read_answer(reader)).status == 200
        assert parsed[0] == began + 1  # the other head, not proven here: parsed
        # Forged: refused, decides nothing, and never learnt.
        forged = request(
            orjson.dumps({"key": "k-a", "category": "auth"}),
            auth=b"Authorization: Bearer " + SECRET.encode()[:-1] + b"X\r\n",
        )
        for _ in range(3):
            writer.write(forged)
            assert_problem(await read_answer(reader), 401, "service_credential_required")
        assert len(server.heads) == 2
        writer.close()
        assert await redis.zcard(window_key(check_api_subject("k-a"), "auth", 60)) == 5
    finally:
        await server.close(1.0)
        await limiter.aclose()


@pytest.mark.parametrize(
    "raw",
    [
        request(BODY, extra=b"Expect: 100-continue\r\n"),
        request(BODY, extra=b"Connection: close\r\n"),
        request(BODY, extra=b"X-Request-Id: mine\r\n"),
        request(BODY, path=CHECK_PATH.encode() + b"?q=1"),
        request(BODY, version=b"HTTP/1.0"),
        request(BODY) + b"\r\n",
        request(BODY) * 2,
        b"\r\n" + request(BODY),
        request(BODY, auth=b""),
        (
            b"POST " + CHECK_PATH.encode() + b" HTTP/1.1\r\n" + AUTH
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n"
        ),
        request(BODY, extra=b"X-Pad: " + b"p" * 1100 + b"\r\n"),
    ],
)  # fmt: skip
async def test_heads_that_are_not_a_plain_check_alone_are_never_learnt(
    listener: Listener, raw: bytes
) -> None:
    answers = await exchange(listener.port, raw, answers=raw.count(b"POST "))
    assert all(a.status < 500 for a in answers)
    assert listener.server.heads == {}


async def test_a_known_head_then_anything_leaves_the_rest_to_the_parser(
    listener: Listener, redis: Redis
) -> None:
    assert (await exchange(listener.port, check("k-r")))[0].status == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        writer.write(check("k-r"))
        assert (await read_answer(reader)).status == 200
        # A known head, a refusal, a known head, then bytes that are no HTTP.
        writer.write(check("k-r") + check("k-r", 99) + check("k-r") + b"NOT HTTP\r\n\r\n")
        assert [(await read_answer(reader)).status for _ in range(4)] == [200, 422, 200, 400]
        assert await closed(reader)
    finally:
        writer.close()
    assert await redis.zcard(window_key(check_api_subject("k-r"), "auth", 60)) == 4


async def test_the_known_heads_are_bounded(listener: Listener) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    try:
        for index in range(checkserver.MAX_PLAIN_HEADS + 10):
            writer.write(request(BODY, extra=b"X-N: %d\r\n" % index))
            assert (await read_answer(reader)).status == 200
            assert 1 <= len(listener.server.heads) <= checkserver.MAX_PLAIN_HEADS
    finally:
        writer.close()


#: Requests a caller may send on one connection: plain checks (learnt, then taken without the
#: parser) between refusals and oddities the parser must see.
stream_parts = st.sampled_from(
    [
        check("f-1"), check("f-1"), check("f-2"), check("f-22"), check("f-1", 2),
        request(BODY, extra=b"X-Request-Id: r-1\r\n"), request(b"{"), request(b'{"key":1}'),
        request(BODY, path=b"/nope"), request(BODY, method=b"PUT"), request(BODY, auth=b""),
        request(BODY, extra=b"Expect: 100-continue\r\n"), b"\r\n",
    ]
)  # fmt: skip


async def _answers_to(port: int, chunks: list[bytes], count: int) -> list[tuple[int, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.001)
        out: list[tuple[int, object]] = []
        for _ in range(count):
            answer = await read_answer(reader)
            if answer.status == 100:
                answer = await read_answer(reader)
            body = answer.json()
            body.pop("reset_ms", None)
            body.pop("instance", None)
            out.append((answer.status, body))
        return out
    finally:
        writer.close()


@FUZZ
@given(parts=st.lists(stream_parts, min_size=1, max_size=10), cuts=st.lists(st.integers(0, 2000)))
@pytest.mark.interpreted  # patches the compiled checkserver._Connection
async def test_fuzzed_streams_are_answered_alike_with_and_without_known_heads(
    listener: Listener,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    parts: list[bytes],
    cuts: list[int],
) -> None:
    """The same bytes, cut into reads anywhere, answered by the parser alone and with the
    heads learnt: the same statuses and bodies in the same order, the same decisions."""
    raw = b"".join(parts)
    count = sum(part.count(b"POST ") + part.count(b"PUT ") for part in parts)
    bounds = sorted({0, len(raw), *(cut for cut in cuts if cut < len(raw))})
    chunks = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    await redis.flushall()
    with monkeypatch.context() as patched:
        patched.setattr(checkserver._Connection, "_remember", lambda self, data: None)
        listener.server.heads.clear()
        alone = await _answers_to(listener.port, chunks, count)
    await redis.flushall()
    # Learnt first (a connection of its own), then the same stream.
    await _answers_to(listener.port, [check("f-1"), check("f-2"), check("f-22")], 3)
    await redis.flushall()
    assert listener.server.heads
    learnt = await _answers_to(listener.port, chunks, count)
    assert learnt == alone
