"""Real servers for the gateway tests: an upstream per routing-table service, a JWKS issuer,
the gateway itself.

The upstreams are small aiohttp apps that echo what they received (so a test can assert on
exactly what the gateway forwarded) and misbehave on request (slow, huge, broken). Keys are
generated per test; the JWKS documents are served over HTTP and can be rotated mid-test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from urr_common.http1 import Http1Site
from urr_common.http1_testing import Http1TestServer
from urr_common.identity import AssertedIdentity, AssertionVerifier
from urr_common.settings import RedisSettings, load_settings
from urr_common.tokens import KeySet, SigningKey, TokenSigner, load_or_create_signing_key
from urr_devstack.procs import RedisServer, free_port
from urr_gateway.app import PIPELINE_KEY, create_app
from urr_gateway.checkapi import CHECK_SERVICE_KEY
from urr_gateway.checkserver import CheckSite
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.keys import revoked_entry_token_key
from urr_gateway.publicserver import PublicServer
from urr_gateway.revocation import VerdictReader, stored_verdict
from urr_gateway.server import build_apps
from urr_gateway.settings import (
    AccessTrustSettings,
    EntryTrustSettings,
    GatewayHttpSettings,
    GatewaySettings,
    IdentityAssertionSettings,
    InternalListenerSettings,
    ProxySettings,
    UpstreamSettings,
)

DOWNLOAD_BYTES = 10 * 1024 * 1024
CHECK_SECRET = "check-api-test-secret-0123456789abcdef"
#: One echoing upstream per ``UpstreamSettings`` field.
UPSTREAM_NAMES = tuple(UpstreamSettings.model_fields)


@contextlib.asynccontextmanager
async def lean_check_listener(app: web.Application) -> AsyncIterator[str]:
    """Serve the check app as ``serve_gateway`` does (the lean listener); its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = CheckSite(runner, app[CHECK_SERVICE_KEY], "127.0.0.1", 0, drain_timeout_s=2.0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site.port}"
    finally:
        await runner.cleanup()


RevokeEntryToken = Callable[[str, str], Awaitable[None]]


@pytest.fixture
def revoke_entry_token(redis_url: str) -> RevokeEntryToken:
    """Revoke an entry token of a user the way the queue service does (its ``jti`` key)."""

    async def revoke(user_id: str, entry_token: str) -> None:
        jti = jwt.decode(entry_token, options={"verify_signature": False})["jti"]
        client = Redis.from_url(redis_url)
        try:
            await client.set(revoked_entry_token_key(user_id, jti), b"1", px=60_000)
        finally:
            await client.aclose()

    return revoke


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the test Redis (files that need another kind define their own)."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


LeanListener = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def lean_listener() -> AsyncIterator[LeanListener]:
    """Serve a check app on the lean listener (as a worker does); its base URL."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(app: web.Application) -> str:
            return await stack.enter_async_context(lean_check_listener(app))

        yield serve


@dataclass
class UpstreamLog:
    """What an upstream saw: one entry per request, plus upload progress."""

    name: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    upload_chunks: list[tuple[float, int]] = field(default_factory=list)


async def _echo(request: web.Request, log: UpstreamLog) -> web.Response:
    body = await request.read()
    seen = {
        "upstream": log.name,
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "query": request.query_string,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_bytes": len(body),
    }
    log.requests.append(seen)
    return web.Response(body=orjson.dumps(seen), content_type="application/json")


async def _download(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = DOWNLOAD_BYTES
    await response.prepare(request)
    chunk = b"d" * (256 * 1024)
    for _ in range(DOWNLOAD_BYTES // len(chunk)):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _upload(request: web.Request, log: UpstreamLog) -> web.Response:
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
        log.upload_chunks.append((time.monotonic(), total))
    return web.json_response({"received": total})


async def _chunked(request: web.Request) -> web.StreamResponse:
    """300 KB in pieces, without a length: aiohttp frames it chunked."""
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    for n in range(30):
        await response.write(bytes([65 + n % 26]) * 10240)
    await response.write_eof()
    return response


async def _die_mid_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 1024 * 1024
    await response.prepare(request)
    await response.write(b"x" * (128 * 1024))
    assert request.transport is not None
    request.transport.close()
    return response


def upstream_app(log: UpstreamLog) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        last = request.path.rstrip("/").rsplit("/", 1)[-1]
        if last == "slow":
            await asyncio.sleep(float(request.query.get("s", "5")))
        if last == "download":
            return await _download(request)
        if last == "upload":
            return await _upload(request, log)
        if last == "redirect":
            raise web.HTTPFound("/api/v1/events/elsewhere")
        if last == "die":
            return await _die_mid_stream(request)
        if last == "chunked":
            return await _chunked(request)
        if last == "own-limits":  # an upstream that states its own rate-limit state
            response = await _echo(request, log)
            response.headers["RateLimit"] = '"upstream";r=7;t=3'
            return response
        if last == "own-security":  # an upstream that sets one security header itself
            response = await _echo(request, log)
            response.headers["X-Frame-Options"] = "SAMEORIGIN"
            return response
        if last == "hop":
            response = await _echo(request, log)
            response.headers["Connection"] = "X-Upstream-Private"
            response.headers["X-Upstream-Private"] = "secret"
            response.headers["Keep-Alive"] = "timeout=5"
            response.headers["Proxy-Authenticate"] = "Basic"
            response.headers.add("Set-Cookie", "a=1")
            response.headers.add("Set-Cookie", "b=2")
            return response
        return await _echo(request, log)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@dataclass
class Issuer:
    """A token issuer: its signer and the JWKS document it publishes."""

    signer: TokenSigner
    published: list[SigningKey]
    fetches: int = 0

    def rotate(self, kid: str) -> None:
        """Sign with a new key and publish it next to the old one."""
        key = SigningKey.generate(kid)
        self.published.append(key)
        self.signer = TokenSigner(
            key=key, issuer=self.signer.issuer, audience=self.signer.audience, ttl_s=300
        )

    def jwks(self) -> dict[str, Any]:
        return KeySet(key.verification_key() for key in self.published).to_jwks()


def make_issuer(issuer: str, audience: str, kid: str) -> Issuer:
    key = SigningKey.generate(kid)
    return Issuer(TokenSigner(key=key, issuer=issuer, audience=audience, ttl_s=300), [key])


@dataclass
class Stack:
    client: TestClient[web.Request, web.Application]
    auth: UpstreamLog
    queue: UpstreamLog
    ticket: UpstreamLog
    access: Issuer
    entry: Issuer
    settings: GatewaySettings
    #: The check API's base URL when the stack was built ``wired``.
    internal_url: str | None = None
    #: Every upstream's log by its settings name (the three above and the others).
    upstreams: dict[str, UpstreamLog] = field(default_factory=dict)
    #: What a caller of the check API sends (its service credential).
    check_headers: dict[str, str] = field(
        default_factory=lambda: {"Authorization": f"Bearer {CHECK_SECRET}"}
    )

    def access_token(self, user_id: str = "u1", role: str = "user", **claims: Any) -> str:
        return self.access.signer.sign(
            user_id, {"email": f"{user_id}@example.com", "role": role, **claims}
        )

    def entry_token(self, user_id: str = "u1", event_id: str = "e1", **kwargs: Any) -> str:
        return self.entry.signer.sign(user_id, {"evt": event_id}, **kwargs)

    @staticmethod
    def headers_of(seen: dict[str, Any]) -> dict[str, list[str]]:
        """The upstream's view of the request headers, by lower-case name."""
        out: dict[str, list[str]] = {}
        for name, value in seen["headers"]:
            out.setdefault(name.lower(), []).append(value)
        return out

    def asserted(self, seen: dict[str, Any]) -> AssertedIdentity | None:
        """The identity the upstream of ``seen`` can verify from ``X-Urr-Identity`` exactly as
        a real upstream does (its own audience, the request's method and path), else None."""
        tokens = self.headers_of(seen).get("x-urr-identity")
        if not tokens:
            return None
        assert len(tokens) == 1
        key = load_or_create_signing_key(
            self.settings.identity.private_key_file, self.settings.identity.key_id
        )
        verifier = AssertionVerifier(KeySet([key.verification_key()]), audience=seen["upstream"])
        return verifier.verify(
            tokens[0], method=seen["method"], path=seen["raw_path"].partition("?")[0]
        )

    def auth_headers(self, user_id: str = "u1", role: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token(user_id, role)}"}


StackFactory = Callable[..., Awaitable[Stack]]


class ProtocolTestServer(Http1TestServer):
    """A ``TestServer`` whose port is served by the gateway's own HTTP/1.1 listener
    (``URR_HTTP__SERVER=protocol``), as ``server.serve_gateway`` serves it (without the
    shedding, which its own tests cover under both servers)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(
            app,
            lambda runner, host: Http1Site(
                runner, lambda: PublicServer(app), host, 0, drain_timeout_s=2.0
            ),
            **kwargs,
        )


def gateway_test_server(app: web.Application, server: str) -> TestServer:
    """The test server of ``app`` on the public listener ``server`` names."""
    if server == "aiohttp":
        return TestServer(app, host="127.0.0.1")
    if app[PIPELINE_KEY].steps is None:
        # Such a test must say so (AIOHTTP_SERVER_ONLY in test_gateway_proxy): never skipped.
        raise ValueError("filters given only as middlewares run under the aiohttp server only")
    return ProtocolTestServer(app, host="127.0.0.1")


@pytest.fixture(params=["aiohttp", "protocol"])
def gateway_server(request: pytest.FixtureRequest) -> str:
    """Which server runs the public listener (``URR_HTTP__SERVER``): every end-to-end test
    of the public app runs under both."""
    server: str = request.param
    return server


@pytest.fixture
async def stack_factory(
    redis_url: str, tmp_path: Path, gateway_server: str
) -> AsyncIterator[StackFactory]:
    """Build a gateway in front of real upstreams; keyword arguments override settings."""
    servers: list[TestServer] = []
    clients: list[TestClient[web.Request, web.Application]] = []
    identity_key_dir = tmp_path / "identity"
    stack = contextlib.AsyncExitStack()

    async def start(app: web.Application) -> str:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    async def build(
        rate_limit_filter: GatewayFilter | None = None,
        revocation_verdict: VerdictReader = stored_verdict,
        wired: bool = False,
        **overrides: Any,
    ) -> Stack:
        """``wired``: build the apps exactly as a worker does (``server.build_apps``, with the
        limiter and the check API) instead of ``create_app`` with the given seams."""
        logs = {name: UpstreamLog(name) for name in UPSTREAM_NAMES}
        urls = {name: await start(upstream_app(log)) for name, log in logs.items()}
        access = make_issuer("urr-auth", "urr", "access-1")
        entry = make_issuer("urr-queue", "urr-entry", "entry-1")

        async def access_jwks(_: web.Request) -> web.Response:
            access.fetches += 1
            return web.json_response(access.jwks())

        async def entry_jwks(_: web.Request) -> web.Response:
            entry.fetches += 1
            return web.json_response(entry.jwks())

        issuer_app = web.Application()
        issuer_app.router.add_get("/access/jwks.json", access_jwks)
        issuer_app.router.add_get("/entry/jwks.json", entry_jwks)
        issuer_url = await start(issuer_app)
        values: dict[str, Any] = {
            "redis": RedisSettings(url=redis_url),
            "upstreams": UpstreamSettings(**urls),
            "access_trust": AccessTrustSettings(
                jwks_url=f"{issuer_url}/access/jwks.json", issuer="urr-auth", audience="urr"
            ),
            "entry_trust": EntryTrustSettings(
                jwks_url=f"{issuer_url}/entry/jwks.json", issuer="urr-queue", audience="urr-entry"
            ),
            "proxy": ProxySettings(connect_timeout_s=2.0, read_timeout_s=2.0),
            # Generous: the test machine is shared, and a timeout here means "not revoked".
            "revocation_timeout_s": 2.0,
            # The check API's one caller in these tests (wired stacks check the credential).
            "internal": {"callers": {"checker": CHECK_SECRET}},
            "identity": IdentityAssertionSettings(
                private_key_file=identity_key_dir / "gw-test.pem", key_id="gw-test"
            ),
        }
        values.update(overrides)
        settings = load_settings(GatewaySettings, **values)
        internal_url = None
        if wired:
            apps = build_apps(settings)
            app = apps.public
            assert apps.internal is not None
            # The check API as a worker serves it: on the lean listener.
            internal_url = await stack.enter_async_context(lean_check_listener(apps.internal))
        else:
            app = create_app(
                settings, rate_limit_filter=rate_limit_filter, revocation_verdict=revocation_verdict
            )
        client = TestClient(gateway_test_server(app, gateway_server))
        await client.start_server()
        clients.append(client)
        return Stack(
            client,
            logs["auth"],
            logs["queue"],
            logs["ticket"],
            access,
            entry,
            settings,
            internal_url,
            logs,
        )

    yield build
    for client in clients:
        await client.close()
    await stack.aclose()
    for server in servers:
        await server.close()


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    return await stack_factory()


@pytest.fixture
def raw_request() -> Callable[..., Awaitable[tuple[int, bytes]]]:
    """Send bytes exactly as given (no client-side URL normalising); ``(status, raw answer)``."""

    async def send(
        client: TestClient[web.Request, web.Application], target: str
    ) -> tuple[int, bytes]:
        assert client.port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        try:
            request = f"GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
            writer.write(request.encode("latin-1"))
            await writer.drain()
            answer = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        return int(answer.split(b" ", 2)[1]), answer

    return send


@pytest.fixture
def restart_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, which the test may stop, freeze or kill: thawed and
    restarted afterwards."""
    try:
        yield redis_server
    finally:
        if redis_server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_server.process.pid, signal.SIGCONT)
        redis_server.ensure_running()


@contextlib.asynccontextmanager
async def _gateway_process(env: dict[str, str], log_path: Path) -> AsyncIterator[None]:
    """``python -m urr_gateway`` with ``env`` (which names ``URR_HTTP__PORT``), ready to serve
    (``/health/ready`` answered 200) when the block starts, stopped when it ends; its output
    goes to ``log_path`` and is shown when it never gets ready."""
    import subprocess
    import sys

    import aiohttp

    port = env["URR_HTTP__PORT"]
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urr_gateway", env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 90
                while True:
                    assert time.monotonic() < deadline, _read(log_path)
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/health/ready") as ready:
                            if ready.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            yield
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def _read(path: Path) -> str:
    return path.read_text()


GatewayProcess = Callable[[dict[str, str], Path], contextlib.AbstractAsyncContextManager[None]]


@pytest.fixture
def gateway_process() -> GatewayProcess:
    """Starts ``python -m urr_gateway`` for the length of an ``async with`` block."""
    return _gateway_process


LocalSettings = Callable[..., GatewaySettings]


@pytest.fixture
def local_gateway_settings(redis_url: str) -> LocalSettings:
    """``local_gateway_settings(**http)``: a gateway on free ports, no JWKS, a dead upstream;
    keyword arguments are ``GatewayHttpSettings`` fields."""

    def build(**http: Any) -> GatewaySettings:
        return load_settings(
            GatewaySettings,
            http=GatewayHttpSettings(port=free_port(), **http),
            internal=InternalListenerSettings(port=free_port()),
            redis=RedisSettings(url=redis_url),
            upstreams=UpstreamSettings(ticket=f"http://127.0.0.1:{free_port()}"),
            access_trust=AccessTrustSettings(jwks_url=None),
            entry_trust=EntryTrustSettings(jwks_url=None),
        )

    return build
