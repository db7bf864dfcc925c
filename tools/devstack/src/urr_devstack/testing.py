"""pytest fixtures giving tests real servers, isolated from each other and from ``make up``.

Redis: a private ``redis-server`` per test session on a free loopback port, so a test may
flush, stop or restart it without touching anything else. PostgreSQL: the server named by
``URR_TEST_POSTGRES_DSN``, else the local trust-auth server on 127.0.0.1:5432 when one
listens, else a private one started for the session from the installed binaries (the same
code as ``make up``; ``URR_TEST_POSTGRES_PRIVATE=1`` forces it), with a fresh database per
test that is dropped afterwards.

Every server started here dies with the pytest process, even one killed with SIGKILL (Linux
``PR_SET_PDEATHSIG``, see ``procs.die_with_parent``): a killed run leaves none behind.

``alert_webhook``: an HTTP receiver for a real Alertmanager's webhook notifications (the
stack test's alert goes there).

Registered in the root ``conftest.py`` as ``pytest_plugins = ["urr_devstack.testing"]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from urr_common.settings import RedisSettings
from urr_devstack import postgres
from urr_devstack.procs import (
    RedisServer,
    ServerProcess,
    dynalite_binary,
    dynalite_server,
    free_port,
    is_listening,
    moto_server,
    tansu_server,
)

DEFAULT_TEST_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Debian's chromium, which the browser tests drive through Playwright (``make test`` installs
#: it; ``playwright install`` cannot download browsers here), and the flags it runs with.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis for this test session."""
    server = RedisServer(
        port=free_port(), workdir=tmp_path_factory.mktemp("redis"), die_with_parent=True
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """A URL to an empty Redis database (flushed before each test)."""
    redis_server.ensure_running()
    redis_server.flushall()
    yield redis_server.url


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[str]:
    """DSN of a database on the test server from which test databases are created."""
    configured = os.environ.get("URR_TEST_POSTGRES_DSN")
    if configured:
        yield configured
        return
    forced = os.environ.get("URR_TEST_POSTGRES_PRIVATE", "") not in ("", "0")
    if not forced and is_listening("127.0.0.1", 5432):
        yield DEFAULT_TEST_POSTGRES_DSN
        return
    with private_postgres_server() as dsn:
        yield dsn


@contextlib.contextmanager
def private_postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL on a free port (fsync off), removed with its data on exit.

    Its folder is made with ``mkdtemp`` rather than pytest's ``tmp_path``: under root the
    server runs as the ``postgres`` user, who cannot enter pytest's 0700 base folder.
    """
    parent = Path(tempfile.mkdtemp(prefix="urr-test-postgres-"))
    port = free_port()
    try:
        server = postgres.private_postgres(
            parent,
            port,
            parent / "postgres.log",
            settings=postgres.FAST_UNSAFE_SETTINGS,
        )
        server.die_with_parent = True
        server.start()
        try:
            dsn = postgres.dsn("127.0.0.1", port, "postgres", "postgres")
            asyncio.run(postgres.wait_accepting(dsn, 30))
            yield dsn
        finally:
            server.stop()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest_asyncio.fixture
async def postgres_dsn(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """DSN of a brand-new empty database, dropped when the test ends."""
    name = f"urr_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = postgres_admin_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(postgres_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's root folder (the one holding the workspace ``pyproject.toml``)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "uv.lock").exists():
            return parent
    return Path.cwd()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private in-memory Tansu broker for this test session (``host:port``)."""
    port = free_port()
    broker = tansu_server(port, tmp_path_factory.mktemp("tansu") / "tansu.log")
    broker.die_with_parent = True
    broker.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private moto server for this test session (``http://127.0.0.1:port``).

    Tests that need a clean slate ``POST {endpoint}/moto-api/reset``.
    """
    port = free_port()
    with _http_server(moto_server(port, tmp_path_factory.mktemp("moto") / "moto.log")) as url:
        yield url


@pytest.fixture(scope="session")
def dynalite_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private dynalite for this session: the tests' DynamoDB, as in the local stack
    (docs/performance.md, "DynamoDB stand-in"). ``make test`` installs it first; without it
    the test fails saying so rather than skipping, so a test that never ran cannot pass."""
    if dynalite_binary() is None:
        pytest.fail("dynalite is not installed: run `make dynalite` (make test does)")
    log = tmp_path_factory.mktemp("dynalite") / "dynalite.log"
    with _http_server(dynalite_server(free_port(), log)) as url:
        yield url


@contextlib.contextmanager
def _http_server(server: ServerProcess) -> Iterator[str]:
    """Start ``server`` (dying with this process), yield its URL, stop it."""
    server.die_with_parent = True
    server.start()
    try:
        yield f"http://{server.host}:{server.port}"
    finally:
        server.stop()


@dataclass
class AlertWebhook:
    """An Alertmanager webhook receiver: every notification POSTed to ``url``, in order."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)

    def firing(self, alertname: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(notification, alert) of the first firing ``alertname`` received, if any."""
        for notification in list(self.received):
            for alert in notification.get("alerts", []):
                labels = alert.get("labels", {})
                if alert.get("status") == "firing" and labels.get("alertname") == alertname:
                    return notification, alert
        return None


@pytest.fixture
def alert_webhook() -> Iterator[AlertWebhook]:
    """A webhook receiver on a free loopback port, for alerts sent by a real Alertmanager."""
    hook = AlertWebhook()

    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            hook.received.append(json.loads(self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receive)
    hook.url = f"http://127.0.0.1:{server.server_port}/alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def admission_log_env(
    port: int,
    postgres_dsn: str,
    kafka_bootstrap: str,
    topic: str,
    key_dir: Path,
    sign_every_s: float | None = None,
) -> dict[str, str]:
    """The environment of a ``python -m urr_admission_log`` a test starts: this process's
    without its ``URR_`` settings, and a port, database, topic and signing key of its own."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("URR_")}
    env.update(
        {
            "URR_HTTP__PORT": str(port),
            "URR_POSTGRES__DSN": postgres_dsn,
            "URR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "URR_ADMISSION_LOG__TOPIC": topic,
            "URR_TREE_HEADS__PRIVATE_KEY_FILE": str(key_dir / "log-1.pem"),
            "URR_TREE_HEADS__KEY_ID": "log-1",
        }
    )
    if sign_every_s is not None:
        env["URR_ADMISSION_LOG__SIGN_EVERY_S"] = str(sign_every_s)
    return env


#: How long a test waits for a Python service process it spawned to listen. Start-up is mostly
#: imports, about 2.5 s of CPU, which took 25-40 s of wall time on the 2-core CI host at a load
#: of 10-15; a test's own waits for what the service does are counted from its listening.
START_UP_S = 60.0


async def wait_process_listening(
    port: int, process: asyncio.subprocess.Process, log: Path, timeout_s: float = START_UP_S
) -> None:
    """Until ``process`` accepts connections on 127.0.0.1:``port``; its log if it exits first."""
    async with asyncio.timeout(timeout_s):
        while True:
            if process.returncode is not None:
                output = await asyncio.to_thread(log.read_text)
                raise AssertionError(f"exited with {process.returncode}:\n{output[-3000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


#: The tests' Redis connect and socket timeouts (production: 0.5 s).
PATIENT_REDIS_TIMEOUT_S = 5.0


def patient_redis(settings: RedisSettings | str) -> RedisSettings:
    """Redis settings (or a URL) with 5 s connect and socket timeouts: the production 0.5 s
    are not met on a loaded CI host (``TimeoutError: Timeout connecting to server``), and a
    test that judges something else must not fail on how fast a connection opens. A stopped
    Redis still fails at once (connection refused)."""
    if isinstance(settings, str):
        settings = RedisSettings(url=settings)
    timeout = PATIENT_REDIS_TIMEOUT_S
    return settings.model_copy(update={"connect_timeout_s": timeout, "socket_timeout_s": timeout})
