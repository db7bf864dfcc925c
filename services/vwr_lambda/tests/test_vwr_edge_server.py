"""The edge stand-in's own HTTP/1.1 listener (``local.edge_server``) under attack: the same
raw bytes sent to the aiohttp app and to the listener get the same answers (the origins an
echo), then malformed requests, oversized heads and bodies, pipelining, viewers that leave
mid-proxy, a drained close, and a fuzz of what it parses."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from urr_common.http1_testing import FUZZ_TOKENS, MALFORMED_REQUESTS, exchange
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


class Served:
    """An edge app on one listener, and its echo origin, on a loop in a thread of their own."""

    def __init__(self, server: str, document: Path) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.origin_hits = 0
        #: While set, the origin's ``/slow`` answers wait for it (``hold``/``release``).
        self.held: asyncio.Event | None = None
        self.run(self._start(document))

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

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

    def close(self) -> None:
        self.release()
        self.run(self.runner.cleanup())
        self.run(self.origin_runner.cleanup())
        self.stop()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("edge") / "edge-config.json"
    path.write_bytes(
        build_document(
            KeySet([KEY.verification_key()]),
            ["evt-1"],
            max_age_s=15,
            issuer="urr-vwr",
            audience="urr-vwr",
        )
    )
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


TOKEN = tier1.issue(
    TokenSigner(KEY, issuer="urr-vwr", audience="urr-vwr", ttl_s=3600),
    event_id="evt-1",
    request_id="6f1c2b6e-1d2a-4c0e-9a55-3b1f0c9d2e11",
    position=1,
    user_id=None,
)


def send(port: int, raw: bytes, *, want: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
    """``exchange``, and a HEAD's answer read raw (its Content-Length announces a body it
    does not carry)."""
    if not raw.startswith(b"HEAD "):
        return exchange(port, raw, want=want, timeout=timeout)
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


#: Requests the two listeners must answer the same.
SAME_ANSWER = [
    b"GET /vwr/evt-1 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /vwr HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /vwr/ HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"HEAD /vwr/evt-1?return=%2Fevents%2Fevt-1 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /vwr/assets/v1/waiting.js HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /vwr/assets/v1/nope.js HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /vwr/assets/v1/.hidden HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /vwr/events/evt-1.json HTTP/1.1\r\nHost: edge\r\n\r\n",
    b'GET /vwr/evt-1 HTTP/1.1\r\nHost: edge\r\nIf-None-Match: W/"nope", *\r\n\r\n',
    b"GET /events/evt-1 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /events/evt-1/seats?x=1&y=%2F HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /api/v1/seats/evt-1 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"POST /api/v1/queue/evt-1/enter HTTP/1.1\r\nHost: edge\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /events/evt-1 HTTP/1.1\r\nHost: edge\r\nCookie: a=b; urr-vwr-token="
    + TOKEN.encode()
    + b"\r\n\r\n",
    b"GET /events/evt-1 HTTP/1.1\r\nHost: edge\r\nCookie: urr-vwr-token=forged\r\n\r\n",
    b"GET /events/evt-2?x=1 HTTP/1.1\r\nHost: edge\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n",
    b"GET /vwr/../events/evt-1 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /anything HTTP/1.1\r\nHost: edge\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n"
    b"Keep-Alive: 5\r\nTE: trailers\r\nX-Kept: 2\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
    b"POST /vwr-api/vwr/assign/evt-1 HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json"
    b"\r\nCloudFront-Viewer-Address: 192.0.2.9:1\r\nContent-Length: 17\r\n\r\n"
    b'{"requestId":"r"}',
    b"GET /vwr-api/vwr/status/evt-1?a=1 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /vwr-api HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"POST /vwr/evt-1 HTTP/1.1\r\nHost: edge\r\nContent-Length: 3\r\n\r\nabc",
    b"POST /chunked HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"PUT /bin HTTP/1.1\r\nHost: edge\r\nContent-Length: 4\r\n\r\n\xff\xfe\x00\x01",
    b"DELETE /a%2Fb%20c/%C3%A9 HTTP/1.1\r\nHost: edge\r\nX-Utf8: \xc3\xa9\r\n\r\n",
    b"GET /vwr%2Fevt-1 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /x/reason HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /x/empty HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"HEAD /events/evt-2 HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /health/live HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /health/ready HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"POST /health/live HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: edge\r\n\r\n",
    b"GET /old HTTP/1.0\r\n\r\n",
    b"GET /vwr/evt-1 HTTP/1.1\r\nHost: edge\r\nX-Request-Id: mine.1\r\n\r\n",
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


def problem(answer: dict[str, Any], status: int) -> dict[str, Any]:
    assert answer["status"] == status
    assert fields_of(answer)["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = json.loads(answer["body"])
    assert body["status"] == status
    return body


@pytest.mark.parametrize(
    "raw",
    [*MALFORMED_REQUESTS, b"GET /vwr/e HTTP/1.1\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n"],
)
def test_malformed_requests_are_a_400_problem_and_reach_no_origin(lean: Served, raw: bytes) -> None:
    hits = lean.origin_hits
    answers = send(lean.port, raw + b"GET /vwr/evt-1 HTTP/1.1\r\n\r\n", want=2)
    problem(answers[0], 400)
    assert lean.origin_hits == hits


def test_a_head_too_large_or_with_too_many_fields_is_a_431(lean: Served) -> None:
    big = b"GET /vwr/evt-1 HTTP/1.1\r\nCookie: " + b"a" * 30_000 + b"\r\n\r\n"
    problem(send(lean.port, big)[0], 431)
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n"
    problem(send(lean.port, many)[0], 431)
    problem(send(lean.port, b"GET /" + b"a" * 40_000)[0], 431)


def test_a_body_over_the_limit_is_a_413_and_never_proxied(lean: Served) -> None:
    hits = lean.origin_hits
    declared = b"POST /events/evt-2 HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
    body = problem(send(lean.port, declared + b"x" * (MAX_BODY + 1))[0], 413)
    assert body["code"] == "payload_too_large"
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY, b"y" * MAX_BODY)
    chunked = b"POST /vwr-api/c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2
    problem(send(lean.port, chunked + b"0\r\n\r\n")[0], 413)
    assert lean.origin_hits == hits
    exact = b"POST /ok HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % MAX_BODY + b"z" * MAX_BODY
    (answer,) = send(lean.port, exact)
    assert answer["status"] == 200
    assert len(json.loads(answer["body"])["body"]) == MAX_BODY


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
                for _ in range(100):
                    if lean.origin_hits > hits:
                        break
                    threading.Event().wait(0.02)
                hits = lean.origin_hits
            # closed with a proxied call in flight and a request half sent
    finally:
        lean.release()
    for _ in range(100):
        if "urr_http_requests_in_flight 0.0" in metrics_text(lean.app):
            break
        threading.Event().wait(0.02)
    assert "urr_http_requests_in_flight 0.0" in metrics_text(lean.app)
    (after,) = send(lean.port, b"GET /after HTTP/1.1\r\n\r\n")
    assert after["status"] == 200


def test_close_lets_a_proxied_call_in_flight_answer(document: Path) -> None:
    served = Served("protocol", document)
    try:
        served.hold()
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(b"GET /slow/in-flight HTTP/1.1\r\n\r\n")
            for _ in range(100):
                if served.origin_hits:
                    break
                threading.Event().wait(0.02)
            closing = asyncio.run_coroutine_threadsafe(served.runner.cleanup(), served.loop)
            threading.Event().wait(0.1)
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
        *FUZZ_TOKENS,
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
    body = draw(st.binary(max_size=40))
    head: bytes = b"%s %s HTTP/1.1\r\n" % (method, target)
    head += b"".join(b"%s: %s\r\n" % field for field in fields)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=_requests() | _garbage)
def test_fuzzed_requests_are_answered_never_with_a_500(lean: Served, raw: bytes) -> None:
    tail = b"GET /vwr/evt-1 HTTP/1.1\r\nConnection: close\r\n\r\n"
    for answer in send(lean.port, raw + tail, want=2, timeout=3.0):
        assert answer["status"] < 500, answer
        if answer["status"] >= 400 and "server" not in answer["headers"]:  # the edge's
            assert fields_of(answer)["content-type"].startswith("application/problem+json")
    (after,) = send(lean.port, b"GET /vwr/evt-1 HTTP/1.1\r\n\r\n")
    assert after["status"] == 200
