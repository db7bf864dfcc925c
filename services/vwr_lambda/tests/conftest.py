"""Fixtures of the Tier-1 tests: fresh tables on the session's moto server, keys, a capacity feed.

``vwr`` is a harness that calls the real Lambda handler with API Gateway events (built from the
JSON files in ``events/``) and parses the answers.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from urr_common.http1_testing import Http1TestServer
from urr_common.service import SETTINGS_KEY
from urr_common.settings import load_settings
from urr_common.tokens import SigningKey, TokenSigner
from urr_vwr_lambda.api import make_handler
from urr_vwr_lambda.local.edge_server import edge_site as lean_edge_site
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.settings import TableSettings, VwrSettings
from urr_vwr_lambda.tables import ensure_tables

EVENTS_DIR = Path(__file__).parent / "events"


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return data


@pytest.fixture(params=["aiohttp", "protocol"])
def edge_server(request: pytest.FixtureRequest) -> str:
    """Both listeners of the edge stand-in (``URR_LOCAL_EDGE_SERVER``) answer every test
    that takes this."""
    return str(request.param)


EdgeSiteMaker = Callable[[web.AppRunner, str, int], web.BaseSite]


@pytest.fixture
def edge_site(edge_server: str) -> EdgeSiteMaker:
    """The public site of an edge app on the listener ``edge_server`` names."""

    def make(runner: web.AppRunner, host: str, port: int) -> web.BaseSite:
        if edge_server == "aiohttp":
            return web.TCPSite(runner, host, port)
        limit = runner.app[SETTINGS_KEY].http.max_body_bytes
        return lean_edge_site(max_body_bytes=limit, drain_timeout_s=2.0)(runner, host, port, False)

    return make


@pytest.fixture
def edge_test_server(edge_server: str) -> Callable[[web.Application], TestServer]:
    """aiohttp's ``TestServer`` of an edge app on the listener ``edge_server`` names."""

    def make(app: web.Application) -> TestServer:
        if edge_server == "aiohttp":
            return TestServer(app)
        site = lean_edge_site(
            max_body_bytes=app[SETTINGS_KEY].http.max_body_bytes, drain_timeout_s=2.0
        )
        return Http1TestServer(app, lambda runner, host: site(runner, host, 0, False))

    return make


@pytest.fixture
def event_file() -> Any:
    """Loads a JSON event from ``tests/events`` (a fresh copy each call)."""
    return load_event


class FakeClock:
    """Wall-clock seconds the test moves by hand."""

    def __init__(self, start: float | None = None) -> None:
        self.now = start if start is not None else time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class CapacityState:
    waiting: int = 0
    admitted: int = 0
    capacity: int = 1_000_000
    admit_per_second: float = 0.0
    status: int = 200
    calls: int = 0


class CapacityServer:
    """A real aiohttp server answering Tier 2's capacity feed, on its own thread and loop.

    The handlers under test are synchronous (boto3, urllib), so the server cannot share the
    test's event loop.
    """

    def __init__(self) -> None:
        self.state: dict[str, CapacityState] = {}
        self.default = CapacityState()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = ""
        self._runner: web.AppRunner | None = None

    def for_event(self, event_id: str) -> CapacityState:
        return self.state.setdefault(event_id, CapacityState())

    async def _capacity(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        state = self.state.get(event_id, self.default)
        state.calls += 1
        if state.status != 200:
            return web.json_response({"error": "down"}, status=state.status)
        return web.json_response(
            {
                "waiting": state.waiting,
                "admitted": state.admitted,
                "capacity": state.capacity,
                "admit_per_second": state.admit_per_second,
            }
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/api/v1/queue/{event_id}/capacity", self._capacity)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def capacity_server() -> Iterator[CapacityServer]:
    server = CapacityServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_endpoint(moto_endpoint: str) -> str:
    """The AWS endpoint of everything but DynamoDB (Secrets Manager): moto."""
    return moto_endpoint


@pytest.fixture
def dynamodb_endpoint(dynalite_endpoint: str) -> str:
    """DynamoDB is dynalite, as in the local stack: it serialises writes to an item as
    DynamoDB does (moto's threads lose an ``ADD`` now and then, docs/performance.md)."""
    return dynalite_endpoint


@pytest.fixture
def dynamodb(dynamodb_endpoint: str) -> Iterator[Any]:
    yield from aws_client("dynamodb", dynamodb_endpoint)


@pytest.fixture
def secretsmanager(aws_endpoint: str) -> Iterator[Any]:
    yield from aws_client("secretsmanager", aws_endpoint)


def aws_client(service: str, aws_endpoint: str) -> Iterator[Any]:
    """A boto3 client of the test's moto server, closed afterwards."""
    client = boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        endpoint_url=aws_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def vwr_tables(dynamodb: Any) -> TableSettings:
    """Tables of this test only (unique names on the shared moto server)."""
    suffix = uuid.uuid4().hex[:10]
    tables = TableSettings(counters=f"counters-{suffix}", positions=f"positions-{suffix}")
    ensure_tables(dynamodb, tables)
    return tables


@pytest.fixture
def access_signer(tmp_path: Path) -> TokenSigner:
    """Stands in for the auth service: signs access tokens its public PEM verifies."""
    key = SigningKey.generate("auth-test")
    public = tmp_path / "access" / "auth-test.pem"
    public.parent.mkdir(parents=True)
    public.write_bytes(key.verification_key().to_pem())
    return TokenSigner(key, issuer="urr-auth", audience="urr", ttl_s=600)


@pytest.fixture
def vwr_settings(
    tmp_path: Path,
    aws_endpoint: str,
    dynamodb_endpoint: str,
    vwr_tables: TableSettings,
    capacity_server: CapacityServer,
    access_signer: TokenSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> VwrSettings:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    keys = tmp_path / "keys" / "vwr"
    return load_settings(
        VwrSettings,
        environment="test",
        aws={
            "endpoint_url": aws_endpoint,
            "dynamodb_endpoint_url": dynamodb_endpoint,
            "region": "us-east-1",
            "access_key_id": "testing",
            "secret_access_key": "testing",
        },
        tables=vwr_tables,
        vwr_tokens={"private_key_file": keys / "local-1.pem", "key_id": "local-1"},
        vwr_trust={
            "public_key_files": [keys / "public" / "local-1.pem"],
            "issuer": "urr-vwr",
            "audience": "urr-vwr",
        },
        access_trust={
            "jwks_url": None,
            "public_key_files": [tmp_path / "access" / "auth-test.pem"],
            "issuer": "urr-auth",
            "audience": "urr",
        },
        queue={"url": capacity_server.url, "timeout_s": 1.0},
        advancer={"steps_per_invocation": 1, "step_interval_s": 10.0},
        # The tests move the counters and check at once; test_vwr_warm.py covers the cache.
        poll={"counters_cache_s": 0},
        edge_config={"target": str(tmp_path / "edge-config.json")},
        # The shared moto server can stall for seconds on a loaded machine; a retried
        # ``ADD nextPosition`` would then leave a gap the contiguity test would see.
        aws_read_timeout_s=60.0,
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any
    cookies: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


def parse_answer(raw: dict[str, Any]) -> Answer:
    headers = {k.lower(): v for k, v in (raw.get("headers") or {}).items()}
    cookies = list(raw.get("cookies") or [])
    for name, values in (raw.get("multiValueHeaders") or {}).items():
        if name.lower() == "set-cookie":
            cookies.extend(values)
        elif name.lower() not in headers:
            headers[name.lower()] = values[-1]
    body_text = raw.get("body") or ""
    if raw.get("isBase64Encoded"):
        body_text = base64.b64decode(body_text).decode()
    body = json.loads(body_text) if body_text else None
    return Answer(int(raw["statusCode"]), headers, body, cookies, raw)


class VwrHarness:
    """Calls the API handler like API Gateway would (REST v1 events) and parses answers."""

    def __init__(
        self,
        settings: VwrSettings,
        clock: FakeClock,
        capacity: CapacityServer,
        access_signer: TokenSigner,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.capacity = capacity
        self.access_signer = access_signer
        self.runtime = VwrRuntime(settings, clock=clock)
        self.handler = make_handler(lambda: self.runtime)
        self._calls = 0

    def event(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        source_ip: str | None = None,
    ) -> dict[str, Any]:
        """``source_ip`` is the caller's address; by default each call is another visitor
        (a fresh address), so the per-address cap of anonymous places meets only the tests
        that name one."""
        template = "rest_assign.json" if method != "GET" else "rest_status.json"
        event = copy.deepcopy(load_event(template))
        self._calls += 1
        event["requestContext"]["identity"]["sourceIp"] = source_ip or (
            f"10.{self._calls >> 16 & 255}.{self._calls >> 8 & 255}.{self._calls & 255}"
        )
        event["httpMethod"] = method
        event["path"] = path
        event["requestContext"]["httpMethod"] = method
        event["body"] = None if body is None else json.dumps(body)
        merged = {"Host": "api.example.com", **(headers or {})}
        if body is not None:
            merged.setdefault("Content-Type", "application/json")
        event["headers"] = merged
        event["multiValueHeaders"] = {k: [v] for k, v in merged.items()}
        return event

    def call(self, event: dict[str, Any]) -> Answer:
        return parse_answer(self.handler(event, None))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        source_ip: str | None = None,
    ) -> Answer:
        return self.call(self.event(method, path, body, headers, source_ip))

    def admin_token(self, role: str = "admin") -> str:
        return self.access_signer.sign("admin-1", {"email": "a@example.com", "role": role})

    def user_token(self, user_id: str) -> str:
        return self.access_signer.sign(user_id, {"email": f"{user_id}@example.com", "role": "user"})

    def admin(self, method: str, path: str, body: Any = None) -> Answer:
        auth = {"Authorization": f"Bearer {self.admin_token()}"}
        return self.request(method, f"/vwr/admin/events/{path}", body, auth)

    def open_event(self, event_id: str, *, batch_size: int = 100, active: bool = True) -> Answer:
        answer = self.admin("PUT", event_id, {"isActive": active, "batchSize": batch_size})
        assert answer.status in (200, 201), answer.body
        return answer

    def assign(self, event_id: str, request_id: str | None = None, **headers: str) -> Answer:
        rid = request_id or str(uuid.uuid4())
        return self.request("POST", f"/vwr/assign/{event_id}", {"requestId": rid}, headers)

    def check(self, event_id: str, request_id: str) -> Answer:
        return self.request("GET", f"/vwr/check/{event_id}/{request_id}")

    def status(self, event_id: str, **headers: str) -> Answer:
        return self.request("GET", f"/vwr/status/{event_id}", headers=headers)


@pytest.fixture
def make_vwr(
    capacity_server: CapacityServer, access_signer: TokenSigner
) -> Iterator[Callable[[VwrSettings], VwrHarness]]:
    """Builds more harnesses (settings of the test's choosing) on the same stand-ins."""
    made: list[VwrHarness] = []

    def make(settings: VwrSettings) -> VwrHarness:
        harness = VwrHarness(settings, FakeClock(), capacity_server, access_signer)
        made.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in made:
            if "dynamodb" in harness.runtime.__dict__:
                harness.runtime.dynamodb.close()


@pytest.fixture
def vwr(vwr_settings: VwrSettings, make_vwr: Callable[[VwrSettings], VwrHarness]) -> VwrHarness:
    return make_vwr(vwr_settings)
