"""Queue test fixtures: settings on private keys, a three-node Redis Cluster, app clients."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from urr_common.clients import redis_client
from urr_common.identity_testing import act_as, as_gateway, identity_settings
from urr_common.settings import AwsSettings, RedisSettings
from urr_common.tokens import SigningKey, TokenSigner
from urr_common.upstream_security import INTERNAL_APP, InternalListenerSettings
from urr_devstack.procs import RedisServer, free_port
from urr_devstack.testing import patient_redis
from urr_queue.app import AUDIENCE, create_app
from urr_queue.console.settings import ConsoleSettings
from urr_queue.settings import (
    AdmissionSettings,
    EntryTokenSettings,
    FiguresSettings,
    QueueEventsSettings,
    QueueSettings,
    ReservationEventsSettings,
    Tier1PlacesSettings,
    VwrTrustSettings,
)
from urr_queue.store import QueueStore
from urr_vwr_lambda.settings import TableSettings
from urr_vwr_lambda.store import VwrStore
from urr_vwr_lambda.tables import ensure_tables


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Three cluster-enabled masters, joined with ``redis-cli --cluster create``."""
    workdir = tmp_path_factory.mktemp("redis-cluster")
    nodes: list[RedisServer] = []
    try:
        for index in range(3):
            node_dir = workdir / f"node{index}"
            server = RedisServer(
                port=free_port(),
                workdir=node_dir,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    # The bus port defaults to port + 10000, which nobody picked for us: another
                    # test's server (or a client's ephemeral port) may hold it.
                    "--cluster-port",
                    str(free_port()),
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            nodes.append(server)
            server.start()
        cli = shutil.which("redis-cli") or "redis-cli"
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _wait_cluster_ok(cli, nodes[0].port)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _wait_cluster_ok(cli: str, port: int) -> None:
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, timeout=5, check=False
        ).stdout.decode()
        if "cluster_state:ok" in info:
            return
        time.sleep(0.1)
    raise TimeoutError("the test Redis Cluster did not become ready")


@pytest.fixture(params=["single", "cluster"])
def redis_settings(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Iterator[RedisSettings]:
    """The same tests on one Redis and on a three-node Redis Cluster (flushed first)."""
    if request.param == "single":
        redis_server.ensure_running()
        redis_server.flushall()
        yield patient_redis(redis_server.url)
        return
    nodes: list[RedisServer] = request.getfixturevalue("redis_cluster")
    for node in nodes:
        node.flushall()
    yield patient_redis(RedisSettings(url=f"redis://127.0.0.1:{nodes[0].port}/0", cluster=True))


@pytest.fixture
def single_redis(redis_server: RedisServer) -> RedisSettings:
    redis_server.ensure_running()
    redis_server.flushall()
    return patient_redis(redis_server.url)


@pytest.fixture
def tier1_key(tmp_path: Path) -> SigningKey:
    """The Tier-1 Lambda's key for these tests; its public half is in the trusted folder."""
    key = SigningKey.generate("vwr-test-1")
    folder = tmp_path / "vwr" / "public"
    folder.mkdir(parents=True)
    (folder / "vwr-test-1.pem").write_bytes(key.verification_key().to_pem())
    return key


@pytest.fixture
def tier1_signer(tier1_key: SigningKey) -> TokenSigner:
    return TokenSigner(tier1_key, "urr-vwr", "urr-vwr", 600)


SettingsFactory = Callable[..., QueueSettings]


@pytest.fixture
def make_settings(tmp_path: Path, tier1_key: SigningKey) -> SettingsFactory:
    """Settings on private key files; background work off unless a test turns it on."""

    def build(redis: RedisSettings, **overrides: Any) -> QueueSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "redis": redis,
            "entry_tokens": EntryTokenSettings(private_key_file=tmp_path / "entry" / "local-1.pem"),
            "vwr_trust": VwrTrustSettings(public_key_files=[tmp_path / "vwr" / "public" / "*.pem"]),
            "admission": AdmissionSettings(enabled=False),
            "queue_events": QueueEventsSettings(enabled=False),
            "reservation_events": ReservationEventsSettings(enabled=False),
            "tier1_places": Tier1PlacesSettings(enabled=False),
            "figures": FiguresSettings(enabled=False),
            "console": ConsoleSettings(enabled=False),
            "heartbeat_bucket_ms": 500,
            "identity": identity_settings(),
            "internal": InternalListenerSettings(callers={"ticket": SecretStr(TICKET_SECRET)}),
        }
        values.update(overrides)
        return QueueSettings(**values)

    return build


@pytest_asyncio.fixture
async def store_on(redis_settings: RedisSettings) -> AsyncIterator[QueueStore]:
    client = redis_client(redis_settings)
    try:
        # As the app makes it: the scripts over the lane on one Redis, redis-py on a cluster.
        store = QueueStore(
            client, heartbeat_bucket_ms=500, lane_timeout_s=redis_settings.socket_timeout_s
        )
        yield store
        await store.aclose()
    finally:
        await client.aclose()


ClientFactory = Callable[..., Any]


@pytest_asyncio.fixture
async def queue_client(
    aiohttp_client: Any, make_settings: SettingsFactory
) -> AsyncIterator[ClientFactory]:
    """``await queue_client(redis_settings, **overrides)`` -> a test client on a fresh app."""

    async def open_client(redis: RedisSettings, **overrides: Any) -> TestClient[Any, Any]:
        app = create_app(make_settings(redis, **overrides), registry=CollectorRegistry())
        client: TestClient[Any, Any] = await aiohttp_client(
            app, middlewares=(as_gateway(AUDIENCE),)
        )
        return client

    yield open_client


@pytest_asyncio.fixture
async def internal_of(aiohttp_client: Any) -> AsyncIterator[Callable[..., Any]]:
    """``await internal_of(public_client)`` -> a client of the same service's internal
    listener application, holding the ticket service's credential."""

    async def open_internal(public: TestClient[Any, Any]) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(
            public.app[INTERNAL_APP], headers={"Authorization": f"Bearer {TICKET_SECRET}"}
        )
        return client

    yield open_internal


def user_headers(user_id: str) -> dict[str, str]:
    """Ask the test client's gateway stand-in to assert this user (``identity_testing``)."""
    return act_as(user_id, "user")


ADMIN_ID = "admin-1"
ADMIN_HEADERS = act_as(ADMIN_ID, "admin")
#: The ticket service's credential at the queue's internal listener, in these tests.
TICKET_SECRET = "ticket-test-secret-0123456789abcdef"


@pytest.fixture
def as_user() -> Callable[[str], dict[str, str]]:
    return user_headers


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return dict(ADMIN_HEADERS)


@pytest.fixture
def local_aws(moto_endpoint: str, dynalite_endpoint: str) -> AwsSettings:
    """The test session's servers as the queue's AWS settings: DynamoDB on dynalite, as in the
    local stack, the rest on moto."""
    return AwsSettings(
        endpoint_url=moto_endpoint,
        dynamodb_endpoint_url=dynalite_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )


@pytest.fixture
def tier1_tables(dynalite_endpoint: str) -> Iterator[tuple[TableSettings, VwrStore]]:
    client = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=dynalite_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    suffix = uuid.uuid4().hex[:10]
    tables = TableSettings(counters=f"counters-{suffix}", positions=f"positions-{suffix}")
    ensure_tables(client, tables)
    store = VwrStore(client, counters_table=tables.counters, positions_table=tables.positions)
    try:
        yield tables, store
    finally:
        client.close()
