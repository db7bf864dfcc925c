"""The API Gateway emulator's own HTTP/1.1 listener (``local.apigw_server``) under attack:
malformed requests, oversized heads and bodies, pipelining, clients that leave mid-call, and
a fuzz of what it parses. The function is an echo (the proxy event back as JSON), so the same
raw bytes sent to the aiohttp app and to the listener must make the same event."""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from urr_common.http1_testing import (
    FUZZ_TOKENS,
    MALFORMED_REQUESTS,
    LoopThread,
    exchange,
    request_bytes,
)
from urr_common.service import metrics_text
from urr_common.settings import HttpSettings
from urr_vwr_lambda.local import apigw
from urr_vwr_lambda.local.apigw_server import ApiSite, answer_bytes, split_url
from urr_vwr_lambda.settings import VwrSettings

MAX_BODY = 2048
#: Event fields that differ per call whatever the server.
_PER_CALL = ("requestId", "requestTimeEpoch")


class Served(LoopThread):
    """One emulator app (its function an echo) served on a loop in a thread of its own."""

    def __init__(self, server: str, *, max_pending: int = 6) -> None:
        super().__init__()
        self.server = server
        self.max_pending = max_pending
        self.port = 0
        self.calls = 0
        self.app: web.Application = self.run(self._start())

    async def _start(self) -> web.Application:
        vwr = VwrSettings(
            http=HttpSettings(port=0, max_body_bytes=MAX_BODY),
            local_api_processes=0,
            local_api_max_pending=self.max_pending,
            local_api_max_pending_reads=self.max_pending,
            create_missing_keys=False,
        )
        app = apigw.create_app(vwr, registry=CollectorRegistry())
        app[apigw.INVOKER_KEY].run = self._echo
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site: web.BaseSite
        if self.server == "protocol":
            site = ApiSite(
                self.runner, "127.0.0.1", 0, max_body_bytes=MAX_BODY, drain_timeout_s=1.0
            )
            await site.start()
            self.port = site.port
        else:
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = self.runner.addresses[0][1]
        return app

    async def _echo(self, event: dict[str, Any], key: str | None, read: bool) -> dict[str, Any]:
        self.calls += 1
        while self.held is not None:
            await self.held.wait()
        if event["path"] == "/fail":
            raise RuntimeError("the function failed")
        answer = {key: value for key, value in event.items() if key != "requestContext"}
        context = {k: v for k, v in event["requestContext"].items() if k not in _PER_CALL}
        answer["requestContext"] = context
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/json", "X-Echo": "1"},
            "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]},
            "body": json.dumps(answer),
        }

    def pending(self) -> tuple[int, int]:
        invoker = self.app[apigw.INVOKER_KEY]
        return invoker.writes.count, invoker.reads.count

    def close(self) -> None:
        self.run(self.runner.cleanup())
        self.stop()


@pytest.fixture(scope="module")
def lean() -> Iterator[Served]:
    served = Served("protocol")
    yield served
    served.close()


@pytest.fixture(scope="module")
def classic() -> Iterator[Served]:
    served = Served("aiohttp")
    yield served
    served.close()


def event_of(answer: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(answer["body"])
    # aiohttp's client address may be "127.0.0.1" either way; the header fields are as sent
    return event


#: Requests whose events must be the same from both servers.
SAME_EVENT = [
    b"GET /vwr/status/evt-1 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /vwr/check/evt-1/abc?a=1&a=2&b=%20+c&d&=e HTTP/1.1\r\nHost: x\r\nX-Id: 1\r\n\r\n",
    b"GET /a%2Fb%20c/%C3%A9?q=%E2%82%AC#frag HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /vwr/assign/evt-1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b'Content-Length: 17\r\n\r\n{"requestId":"r"}',
    b"POST /bin HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n\xff\xfe\x00\x01",
    b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"GET /multi HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\nCookie: b=2\r\nX-A: 1\r\nx-a: 2\r\n"
    b"User-Agent: ua/1\r\n\r\n",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"DELETE /vwr/admin/events/evt-1 HTTP/1.1\r\nHost: x\r\nX-Utf8: \xc3\xa9\r\n"
    b"X-Latin: \xe9\r\n\r\n",
    b"OPTIONS /vwr/assign/x HTTP/1.1\r\nHost: x\r\nOrigin: https://a\r\n\r\n",
]


@pytest.mark.parametrize("raw", SAME_EVENT)
def test_the_listener_makes_the_event_aiohttp_made(
    lean: Served, classic: Served, raw: bytes
) -> None:
    ours = exchange(lean.port, raw)
    theirs = exchange(classic.port, raw)
    assert [a["status"] for a in ours] == [a["status"] for a in theirs] == [200]
    assert event_of(ours[0]) == event_of(theirs[0])
    for name in ("content-type", "x-echo", "set-cookie", "content-length"):
        assert ours[0]["headers"].get(name) == theirs[0]["headers"].get(name), name
    assert ours[0]["headers"]["x-request-id"]


def test_answers_keep_the_callers_request_id_and_the_health_routes_answer(lean: Served) -> None:
    (answer,) = exchange(lean.port, b"GET /x HTTP/1.1\r\nX-Request-Id: my-id.1\r\n\r\n")
    assert answer["headers"]["x-request-id"] == "my-id.1"
    (answer,) = exchange(lean.port, b"GET /x HTTP/1.1\r\nX-Request-Id: bad id!\r\n\r\n")
    assert len(answer["headers"]["x-request-id"]) == 32
    (live,) = exchange(lean.port, b"GET /health/live HTTP/1.1\r\n\r\n")
    assert live["status"] == 200
    # (a HEAD answer's Content-Length announces a body it does not carry: read it raw)
    with socket.create_connection(("127.0.0.1", lean.port), timeout=5) as sock:
        sock.sendall(b"HEAD /health/live HTTP/1.1\r\n\r\nGET /health/live HTTP/1.1\r\n\r\n")
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 2 or not data.endswith(b"}"):
            data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"Content-Length: 17" in head
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    assert "urr_http_requests_total" in metrics_text(lean.app)
    assert 'route="/{tail}"' in metrics_text(lean.app)


def problem(answer: dict[str, Any], status: int) -> dict[str, Any]:
    assert answer["status"] == status
    assert answer["headers"]["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = json.loads(answer["body"])
    assert body["status"] == status
    return body


@pytest.mark.parametrize("raw", MALFORMED_REQUESTS)
def test_malformed_requests_are_a_400_problem(lean: Served, raw: bytes) -> None:
    answers = exchange(lean.port, raw + b"GET /next HTTP/1.1\r\n\r\n", want=2)
    problem(answers[0], 400)
    assert len(answers) == 1 or answers[0]["headers"].get("connection") != "close"


def test_a_head_too_large_or_with_too_many_fields_is_a_431(lean: Served) -> None:
    big = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 30_000 + b"\r\n\r\n"
    problem(exchange(lean.port, big)[0], 431)
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n"
    problem(exchange(lean.port, many)[0], 431)
    endless = b"GET /" + b"a" * 40_000
    problem(exchange(lean.port, endless)[0], 431)


def test_a_body_over_the_limit_is_a_413_before_it_is_called(lean: Served) -> None:
    calls = lean.calls
    declared = b"POST /vwr/assign/e HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    body = problem(exchange(lean.port, declared + b"x" * (MAX_BODY + 1))[0], 413)
    assert body["code"] == "payload_too_large"
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY, b"y" * MAX_BODY)
    chunked = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n"
    problem(exchange(lean.port, chunked)[0], 413)
    (exact,) = exchange(
        lean.port, b"POST /ok HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % MAX_BODY + b"z" * MAX_BODY
    )
    assert exact["status"] == 200
    assert lean.calls == calls + 1


def test_pipelined_requests_are_answered_in_order(lean: Served) -> None:
    raw = (
        b"".join(b"GET /p/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(20))
        + b"POST /p/last HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    answers = exchange(lean.port, raw, want=21)
    assert [event_of(a)["path"] for a in answers] == [f"/p/{i}" for i in range(20)] + ["/p/last"]
    assert answers[-1]["headers"]["connection"] == "close"


def test_expect_100_continue_is_answered(lean: Served) -> None:
    raw = b"POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi"
    with socket.create_connection(("127.0.0.1", lean.port), timeout=5) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data.partition(b"100 Continue\r\n\r\n")[2]:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


def test_a_function_that_fails_is_a_logged_500_problem(lean: Served) -> None:
    body = problem(exchange(lean.port, b"GET /fail HTTP/1.1\r\n\r\n")[0], 500)
    assert body["code"] == "internal_error"


def wait_until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Poll ``condition`` (the server runs in another thread) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_client_that_leaves_mid_call_leaves_nothing_pending(lean: Served) -> None:
    lean.hold()
    try:
        for _ in range(3):
            pending = lean.pending()[0]
            with socket.create_connection(("127.0.0.1", lean.port), timeout=5) as sock:
                sock.sendall(b"POST /slow HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /sl")
                wait_until(functools.partial(lambda seen: lean.pending()[0] > seen, pending))
            # closed with a call in flight and a request half sent
        assert lean.pending() == (3, 0)
    finally:
        lean.release()
    wait_until(lambda: lean.pending() == (0, 0))
    (answer,) = exchange(lean.port, b"GET /after HTTP/1.1\r\n\r\n")
    assert answer["status"] == 200


def test_past_the_pending_limit_the_listener_throttles_with_retry_after() -> None:
    served = Served("protocol", max_pending=1)
    try:
        served.hold()
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as first:
            first.sendall(b"POST /busy HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            wait_until(lambda: served.pending() == (1, 0))
            (answer,) = exchange(served.port, b"POST /busy HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            body = problem(answer, 429)
            assert body["code"] == "throttled"
            assert answer["headers"]["retry-after"] == str(apigw.THROTTLE_RETRY_AFTER_S)
            assert answer["headers"]["cache-control"] == "no-store"
            served.release()
            assert b" 200 OK" in first.recv(65536)
        assert "urr_vwr_apigw_throttled_total 1.0" in metrics_text(served.app)
    finally:
        served.release()
        served.close()


def test_close_lets_a_call_in_flight_answer() -> None:
    served = Served("protocol")
    served.hold()
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(b"GET /in-flight HTTP/1.1\r\n\r\n")
        wait_until(lambda: served.pending() == (0, 1))
        closing = asyncio.run_coroutine_threadsafe(served.runner.cleanup(), served.loop)
        threading.Event().wait(0.1)
        served.release()
        closing.result(5)
        data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    served.stop()


def test_split_url_reads_targets_as_aiohttp_does() -> None:
    assert split_url(b"/a/b") == ("/a/b", [])
    assert split_url(b"/a%20b?x=1&x=2") == ("/a b", [("x", "1"), ("x", "2")])
    assert split_url(b"http://host/p?q=1") == ("/p", [("q", "1")])


def test_answer_bytes_refuses_a_line_break_in_a_header() -> None:
    with pytest.raises(ValueError, match="line break"):
        answer_bytes(200, [("X-A", "1\r\nX-B: 2")], b"", b"id", b"now", head=False, close=False)


# --- fuzz ------------------------------------------------------------------------------------

_tokens = st.sampled_from(FUZZ_TOKENS)
_garbage = st.lists(_tokens | st.binary(max_size=8), max_size=40).map(b"".join)


@st.composite
def _requests(draw: Callable[[Any], Any]) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH"]) | st.binary(max_size=6))
    target = draw(st.binary(max_size=30).map(lambda b: b"/" + b) | _garbage)
    fields = draw(
        st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=20)), max_size=5)
    )
    return request_bytes(method, target, fields, draw(st.binary(max_size=40)))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=_requests() | _garbage)
def test_fuzzed_requests_are_answered_never_with_a_500(lean: Served, raw: bytes) -> None:
    answers = exchange(
        lean.port, raw + b"GET /after HTTP/1.1\r\nConnection: close\r\n\r\n", want=2, timeout=3.0
    )
    for answer in answers:
        assert answer["status"] < 500, answer
        if answer["status"] >= 400:
            assert answer["headers"]["content-type"].startswith("application/problem+json")
    # the listener lives on
    (after,) = exchange(lean.port, b"GET /alive HTTP/1.1\r\n\r\n")
    assert after["status"] == 200


def test_the_listener_switch_is_validated_and_defaults_to_the_lean_one() -> None:
    assert VwrSettings(create_missing_keys=False).local_api_server == "protocol"
    assert VwrSettings(local_api_server="aiohttp").local_api_server == "aiohttp"
    with pytest.raises(ValueError, match="local_api_server"):
        VwrSettings(local_api_server="uvicorn")
