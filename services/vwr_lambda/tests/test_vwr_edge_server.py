"""The edge stand-in's own HTTP/1.1 listener (``local.edge_server``) under attack: the same
raw bytes sent to the aiohttp app and to the listener get the same answers (the origins an
echo), then malformed requests, oversized heads and bodies, pipelining, viewers that leave
mid-proxy, a drained close, and a fuzz of what it parses."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from urr_common import http1_testing as raw_http
from urr_common.service import metrics_text
from urr_common.settings import HttpSettings
from urr_common.tokens import KeySet, SigningKey, TokenSigner
from urr_vwr_lambda import tier1
from urr_vwr_lambda.edge_config import build_document
from urr_vwr_lambda.local import edge as edge_emulator
from urr_vwr_lambda.local.edge_server import edge_site, routed_path
from urr_vwr_lambda.settings import EdgeEmulatorSettings

MAX_BODY = 2048
KEY = SigningKey.generate("edge-server-1")
#: Answer fields that differ per request or per server whatever the listener.
_VARYING = ("date", "x-request-id", "server")


async def _echo(request: web.Request, held: asyncio.Event | None) -> web.Response:
    """The origins: the request as they got it (the viewer's port aside)."""
    if held is not None and request.path.startswith("/slow"):
        await held.wait()
    body = await request.read()
    fields = [
        [name, value]
        for name, value in request.headers.items()
        if name.lower() not in ("cloudfront-viewer-address", "host")  # (each its own origin)
    ]
    if request.path.endswith("/reason"):
        return web.Response(status=299, reason="Fine Indeed", text="odd")
    if request.path.endswith("/empty"):
        return web.Response(status=204, headers={"X-Empty": "1"})
    echoed = {
        "method": request.method,
        "target": request.raw_path,
        "fields": fields,
        "viewer": request.headers.get("CloudFront-Viewer-Address", "").rpartition(":")[0],
        "body": body.decode("latin-1"),
    }
    response = web.json_response(echoed, headers={"X-Origin": "yes", "Connection": "keep-alive"})
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


class Served(raw_http.LoopThread):
    """An edge app on one listener, and its echo origin, on a loop in a thread of their own
    (the origin's ``/slow`` answers wait while ``held``)."""

    def __init__(self, server: str, document: Path) -> None:
        super().__init__()
        self.server = server
        self.origin_hits = 0
        self.run(self._start(document))

    async def _start(self, document: Path) -> None:
        origin = web.Application()
        origin.router.add_route("*", "/{tail:.*}", self._count)
        self.origin_runner = web.AppRunner(origin, access_log=None)
        await self.origin_runner.setup()
        await web.TCPSite(self.origin_runner, "127.0.0.1", 0).start()
        origin_url = f"http://127.0.0.1:{self.origin_runner.addresses[0][1]}"
        edge_settings = EdgeEmulatorSettings(
            http=HttpSettings(port=0, max_body_bytes=MAX_BODY),
            gateway_url=origin_url,
            api_url=origin_url + "/apigw",
            edge_config={"target": str(document)},
        )
        self.app = edge_emulator.create_app(edge_settings, registry=CollectorRegistry())
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        if self.server == "protocol":
            site = edge_site(max_body_bytes=MAX_BODY, drain_timeout_s=1.0)(
                self.runner, "127.0.0.1", 0, False
            )
            await site.start()
            self.port = site.port
        else:
            await web.TCPSite(self.runner, "127.0.0.1", 0).start()
            self.port = self.runner.addresses[0][1]

    async def _count(self, request: web.Request) -> web.StreamResponse:
        self.origin_hits += 1
        return await _echo(request, self.held)

    def close(self) -> None:
        self.release()
        self.run(self.runner.cleanup())
        self.run(self.origin_runner.cleanup())
        self.stop()


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge document: one active event, ``KEY``'s tokens admit to it."""
    path = tmp_path_factory.mktemp("edge") / "edge-config.json"
    keys, names = KeySet([KEY.verification_key()]), {"issuer": "urr-vwr", "audience": "urr-vwr"}
    path.write_bytes(build_document(keys, ["evt-1"], max_age_s=15, **names))
    return path


@pytest.fixture(scope="module")
def lean(document: Path) -> Iterator[Served]:
    served = Served("protocol", document)
    yield served
    served.close()


@pytest.fixture(scope="module")
def classic(document: Path) -> Iterator[Served]:
    served = Served("aiohttp", document)
    yield served
    served.close()


SIGNER = TokenSigner(KEY, issuer="urr-vwr", audience="urr-vwr", ttl_s=3600)
TOKEN = tier1.issue(
    SIGNER, event_id="evt-1", request_id=str(uuid.uuid4()), position=1, user_id=None
)


def send(port: int, raw: bytes, *, want: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    """``raw_http.exchange``, and a HEAD's answer read raw (its Content-Length announces a body it
    does not carry)."""
    if not raw.startswith(b"HEAD "):
        return raw_http.exchange(port, raw, want=want, timeout=timeout)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    lines = data.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    pairs = (line.partition(":") for line in lines[1:])
    headers = {name.lower(): value.strip() for name, _, value in pairs}
    return [{"status": int(lines[0].split()[1]), "headers": headers, "body": b""}]


def fields_of(answer: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in answer["headers"].items() if name not in _VARYING}


def body_of(answer: dict[str, Any]) -> Any:
    body: bytes = answer["body"]
    kind = fields_of(answer).get("content-type", "")
    if "json" in kind and body:
        return json.loads(body)
    return body


def req(line: bytes, *fields: bytes, body: bytes = b"") -> bytes:
    """``line`` (method and target) as HTTP/1.1 with ``Host: edge``, ``fields`` and ``body``."""
    framing = [b"Content-Length: %d" % len(body)] if body else []
    lines = [line + b" HTTP/1.1", b"Host: edge", *fields, *framing]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


COOKIE = b"Cookie: a=b; urr-vwr-token=" + TOKEN.encode()
#: Requests the two listeners must answer the same.
SAME_ANSWER = [
    req(b"GET /vwr/evt-1"),
    req(b"GET /vwr"),
    req(b"GET /vwr/"),
    req(b"HEAD /vwr/evt-1?return=%2Fevents%2Fevt-1"),
    req(b"GET /vwr/assets/v1/waiting.js"),
    req(b"GET /vwr/assets/v1/nope.js"),
    req(b"GET /vwr/assets/v1/.hidden"),
    req(b"GET /vwr/events/evt-1.json"),
    req(b"GET /vwr/evt-1", b'If-None-Match: W/"nope", *'),
    req(b"GET /events/evt-1"),
    req(b"GET /events/evt-1/seats?x=1&y=%2F"),
    req(b"GET /api/v1/seats/evt-1"),
    req(b"POST /api/v1/queue/evt-1/enter", body=b"{}"),
    req(b"GET /events/evt-1", COOKIE),
    req(b"GET /events/evt-1", b"Cookie: urr-vwr-token=forged"),
    req(b"GET /events/evt-2?x=1", b"X-Forwarded-For: 192.0.2.1"),
    req(b"GET /vwr/../events/evt-1"),
    req(
        b"GET /anything",
        b"Connection: keep-alive, X-Drop",
        b"X-Drop: 1",
        b"Keep-Alive: 5",
        b"TE: trailers",
        b"X-Kept: 2",
        b"Cookie: a=1",
        b"Cookie: b=2",
    ),
    req(
        b"POST /vwr-api/vwr/assign/evt-1",
        b"Content-Type: application/json",
        b"CloudFront-Viewer-Address: 192.0.2.9:1",
        body=b'{"requestId":"r"}',
    ),
    req(b"GET /vwr-api/vwr/status/evt-1?a=1"),
    req(b"GET /vwr-api"),
    req(b"POST /vwr/evt-1", body=b"abc"),
    req(b"POST /chunked", b"Transfer-Encoding: chunked")[:-4]
    + b"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    req(b"PUT /bin", body=b"\xff\xfe\x00\x01"),
    req(b"DELETE /a%2Fb%20c/%C3%A9", b"X-Utf8: \xc3\xa9"),
    req(b"GET /vwr%2Fevt-1"),
    req(b"GET /x/reason"),
    req(b"GET /x/empty"),
    req(b"HEAD /events/evt-2"),
    req(b"GET /health/live"),
    req(b"GET /health/ready"),
    req(b"POST /health/live", b"Content-Length: 0"),
    req(b"GET /metrics"),
    b"GET /old HTTP/1.0\r\n\r\n",
    req(b"GET /vwr/evt-1", b"X-Request-Id: mine.1"),
]


@pytest.mark.parametrize("raw", SAME_ANSWER)
def test_the_listener_answers_what_aiohttp_answered(
    lean: Served, classic: Served, raw: bytes
) -> None:
    (ours,) = send(lean.port, raw)
    (theirs,) = send(classic.port, raw)
    assert ours["status"] == theirs["status"]
    fields = fields_of(ours)
    if b" HTTP/1.0\r\n" in raw:  # (aiohttp closes without saying so)
        assert fields.pop("connection") == "close"
    assert fields == fields_of(theirs)
    assert body_of(ours) == body_of(theirs)
    assert ours["headers"]["x-request-id"]
    if b"X-Request-Id: mine.1" in raw:
        assert ours["headers"]["x-request-id"] == "mine.1"


def test_a_304_when_the_etag_matches(lean: Served) -> None:
    (page,) = send(lean.port, b"GET /vwr/evt-1 HTTP/1.1\r\n\r\n")
    etag = page["headers"]["etag"]
    (again,) = send(
        lean.port, b"GET /vwr/evt-1 HTTP/1.1\r\nIf-None-Match: %s\r\n\r\n" % etag.encode()
    )
    assert again["status"] == 304
    assert again["body"] == b""
    assert again["headers"]["etag"] == etag


def test_the_metrics_name_the_routes_aiohttp_named(lean: Served) -> None:
    for raw in (
        b"GET /vwr HTTP/1.1\r\n\r\n",
        b"GET /vwr/evt-1 HTTP/1.1\r\n\r\n",
        b"GET /vwr-api/vwr/status/evt-1 HTTP/1.1\r\n\r\n",
        b"GET /events/evt-2 HTTP/1.1\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\n\r\n",
    ):
        send(lean.port, raw)
    text = metrics_text(lean.app)
    for route in ("/vwr", "/vwr/{tail}", "/vwr-api/{tail}", "/{tail}", "/health/live"):
        assert f'route="{route}"' in text, route


def test_routed_paths_are_those_aiohttp_matches() -> None:
    assert routed_path(b"/vwr/evt-1?x=1") == ("/vwr/evt-1", "/vwr/evt-1")
    assert routed_path(b"/vwr%2Fx") == ("/vwr/x", "/vwr%2Fx")
    assert routed_path(b"/%76wr/x") == ("/vwr/x", "/vwr/x")


def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def problem(answer: dict[str, Any], status: int) -> dict[str, Any]:
    assert answer["status"] == status
    assert fields_of(answer)["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = json.loads(answer["body"])
    assert body["status"] == status
    return body


@pytest.mark.parametrize(
    "raw",
    [
        *raw_http.MALFORMED_REQUESTS,
        b"GET /vwr/e HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
    ],
)
def test_malformed_requests_are_a_400_problem_and_reach_no_origin(lean: Served, raw: bytes) -> None:
    hits = lean.origin_hits
    answers = send(lean.port, raw + b"GET /vwr/evt-1 HTTP/1.1\r\n\r\n", want=2)
    problem(answers[0], 400)
    assert lean.origin_hits == hits


_CHUNK = b"%x\r\n%s\r\n" % (MAX_BODY, b"y" * MAX_BODY)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (req(b"GET /vwr/evt-1", b"Cookie: " + b"a" * 30_000), 431),
        (req(b"GET /", *(b"X-%d: 1" % i for i in range(100))), 431),
        (b"GET /" + b"a" * 40_000, 431),
        (req(b"POST /events/evt-2", body=b"x" * (MAX_BODY + 1)), 413),
        (
            req(b"POST /vwr-api/c", b"Transfer-Encoding: chunked") + _CHUNK * 2 + b"0\r\n\r\n",
            413,
        ),
    ],
)
def test_what_is_too_large_is_refused_and_never_proxied(
    lean: Served, raw: bytes, status: int
) -> None:
    hits = lean.origin_hits
    body = problem(send(lean.port, raw)[0], status)
    assert body["code"] == ("payload_too_large" if status == 413 else "headers_too_large")
    assert lean.origin_hits == hits


def test_a_body_of_the_limit_is_proxied_whole(lean: Served) -> None:
    (answer,) = send(lean.port, req(b"POST /ok", body=b"z" * MAX_BODY))
    assert answer["status"] == 200
    assert json.loads(answer["body"])["body"] == "z" * MAX_BODY


def test_pipelined_requests_of_every_kind_are_answered_in_order(lean: Served) -> None:
    kinds = [
        b"GET /vwr/evt-1 HTTP/1.1\r\n\r\n",
        b"GET /events/evt-1 HTTP/1.1\r\n\r\n",
        b"GET /p/%d HTTP/1.1\r\n\r\n",
        b"GET /vwr-api/q/%d HTTP/1.1\r\n\r\n",
        b"GET /vwr/assets/v1/nope.js HTTP/1.1\r\n\r\n",
    ]
    raw = b"".join((kinds[i % 5] % i) if b"%d" in kinds[i % 5] else kinds[i % 5] for i in range(40))
    raw += b"POST /p/last HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    answers = send(lean.port, raw, want=41)
    assert [a["status"] for a in answers[:5]] == [200, 302, 200, 200, 404]
    proxied = [json.loads(a["body"])["target"] for a in answers if "x-origin" in fields_of(a)]
    assert proxied == [
        f"/p/{i}" if i % 5 == 2 else f"/apigw/q/{i}" for i in range(40) if i % 5 in (2, 3)
    ] + ["/p/last"]
    assert fields_of(answers[-1])["connection"] == "close"


def test_a_viewer_that_leaves_mid_proxy_leaves_the_listener_well(lean: Served) -> None:
    lean.hold()
    try:
        hits = lean.origin_hits
        for n in range(3):
            with socket.create_connection(("127.0.0.1", lean.port), timeout=5) as sock:
                sock.sendall(b"POST /slow/%d HTTP/1.1\r\nContent-Length: 1\r\n\r\nxGET /sl" % n)
                until(lambda: lean.origin_hits > hits)  # noqa: B023 - called at once
                hits = lean.origin_hits
            # closed with a proxied call in flight and a request half sent
    finally:
        lean.release()
    until(lambda: "urr_http_requests_in_flight 0.0" in metrics_text(lean.app))
    (after,) = send(lean.port, b"GET /after HTTP/1.1\r\n\r\n")
    assert after["status"] == 200


def test_close_lets_a_proxied_call_in_flight_answer(document: Path) -> None:
    served = Served("protocol", document)
    try:
        served.hold()
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(b"GET /slow/in-flight HTTP/1.1\r\n\r\n")
            until(lambda: served.origin_hits > 0)
            closing = asyncio.run_coroutine_threadsafe(served.runner.cleanup(), served.loop)
            threading.Event().wait(0.1)
            assert not closing.done()  # the close waits for the answer owed
            served.release()
            closing.result(5)
            data = sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'"target": "/slow/in-flight"' in data
    finally:
        served.release()
        served.run(served.origin_runner.cleanup())
        served.stop()


# --- fuzz ------------------------------------------------------------------------------------

_tokens = st.sampled_from(
    [
        *raw_http.FUZZ_TOKENS,
        b"HEAD",
        b"/vwr/",
        b"/vwr-api/",
        b"/events/evt-1",
        b"/api/v1/seats/evt-1",
        b"assets/v1/",
        b"..",
        b"%2F",
        b"Cookie",
        b"urr-vwr-token=",
        b"If-None-Match",
        b"X-Forwarded-For",
    ]
)
_garbage = st.lists(_tokens | st.binary(max_size=8), max_size=40).map(b"".join)


@st.composite
def _requests(draw: Callable[[Any], Any]) -> bytes:
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT"]) | st.binary(max_size=6))
    target = draw(_garbage.map(lambda b: b"/" + b) | st.binary(max_size=30))
    fields = draw(st.lists(st.tuples(_garbage, _garbage), max_size=5))
    return raw_http.request_bytes(method, target, fields, draw(st.binary(max_size=40)))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=_requests() | _garbage)
def test_fuzzed_requests_are_answered_never_with_a_500(lean: Served, raw: bytes) -> None:
    tail = b"GET /vwr/evt-1 HTTP/1.1\r\nConnection: close\r\n\r\n"
    for answer in send(lean.port, raw + tail, want=2, timeout=3.0):
        assert answer["status"] < 500, answer
        if answer["status"] >= 400 and "server" not in answer["headers"]:  # the edge's
            assert fields_of(answer)["content-type"].startswith("application/problem+json")
    (after,) = send(lean.port, b"GET /vwr/evt-1 HTTP/1.1\r\n\r\n")
    assert after["status"] == 200
