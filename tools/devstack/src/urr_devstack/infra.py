"""Find or start the servers of DESIGN.md §3: Redis, PostgreSQL, moto, dynalite (DynamoDB),
Kafka (Tansu).

A server already listening on its port is reused (after checking it speaks the right
protocol: port 5000 is often something else); a missing one is started from the installed
binaries, in its own process group, and stopped again by ``Infra.stop``. Servers we reused
are never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from urr_common import kafka_topics
from urr_devstack import aws, postgres
from urr_devstack.procs import (
    ProcessExitedError,
    RedisServer,
    ServerProcess,
    dynalite_binary,
    dynalite_server,
    is_listening,
    moto_server,
    tansu_server,
)
from urr_devstack.settings import DevstackSettings
from urr_devstack.signals import Stopping, never


class InfraError(RuntimeError):
    """A server cannot be found or started; the message says what to change."""


class StartedServer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def log_path(self) -> Path: ...

    def stop(self, escalate: Callable[[], bool] = never) -> None: ...


@dataclass(frozen=True)
class ServerAddress:
    name: str
    port: int
    #: True when we started it (and so stop it); False when it was already listening.
    started: bool


@dataclass
class Infra:
    """The servers the stack talks to, and those of them we own."""

    host: str
    redis_url: str
    postgres_admin_dsn: str
    kafka_bootstrap: str
    moto_url: str
    #: DynamoDB's endpoint when it is not moto's (dynalite).
    dynalite_url: str | None = None
    servers: list[ServerAddress] = field(default_factory=list)
    started: list[StartedServer] = field(default_factory=list)

    def stop(self, escalate: Callable[[], bool] = never) -> None:
        """Stop the servers we started, newest first (Tansu before the moto it writes to);
        each is killed outright once ``escalate()`` says so (a second Ctrl-C)."""
        while self.started:
            server = self.started.pop()
            with contextlib.suppress(Exception):
                server.stop(escalate)

    @property
    def dynamodb_url(self) -> str:
        return self.dynalite_url or self.moto_url

    def dead_servers(self) -> list[StartedServer]:
        return [server for server in self.started if not server.running]


def _aws_endpoint(settings: DevstackSettings, url: str) -> aws.AwsEndpoint:
    return aws.AwsEndpoint(
        url=url,
        region=settings.aws_region,
        access_key_id=settings.aws_access_key_id,
        secret_access_key=settings.aws_secret_access_key,
    )


def start_infra(
    settings: DevstackSettings,
    state_dir: Path,
    say: Callable[[str], None] = print,
    cancelled: Callable[[], bool] = never,
    escalate: Callable[[], bool] = never,
) -> Infra:
    """Reuse or start every server; on any failure stop what was started and raise.

    ``cancelled()`` true (a stop signal) ends the waits with ``Stopping``; ``escalate()`` true
    makes the clean-up kill rather than drain.
    """
    host = settings.host
    ports = settings.ports
    logs = state_dir / "logs"
    infra = Infra(
        host=host,
        redis_url=f"redis://{host}:{ports.redis}/0",
        postgres_admin_dsn=postgres.dsn(host, ports.postgres, settings.postgres_user, "postgres"),
        kafka_bootstrap=f"{host}:{ports.kafka}",
        moto_url=f"http://{host}:{ports.moto}",
    )
    try:
        launched: list[ServerProcess | RedisServer] = []
        # moto first: it takes longest to import, and initdb runs meanwhile.
        if not _reuse("moto", host, ports.moto, infra, say, lambda: check_moto(infra.moto_url)):
            _launch(moto_server(ports.moto, logs / "moto.log", host), infra, launched)
        if settings.dynamodb == "dynalite":
            _find_or_launch_dynalite(settings, infra, logs, say, launched)
        if not _reuse(
            "redis", host, ports.redis, infra, say, lambda: check_redis(host, ports.redis)
        ):
            redis = RedisServer(port=ports.redis, workdir=state_dir / "redis", host=host)
            _launch(redis, infra, launched)
        if not _reuse(
            "postgres",
            host,
            ports.postgres,
            infra,
            say,
            lambda: asyncio.run(postgres.check_server(infra.postgres_admin_dsn)),
        ):
            _launch(_private_postgres(settings, state_dir, logs), infra, launched)
        for server in launched:
            server.wait_ready(settings.server_start_timeout_s, cancelled)
            say(f"started {server.name} on port {server.port} (log: {server.log_path})")
        if any(server.name == "postgres" for server in launched):
            asyncio.run(
                postgres.wait_accepting(infra.postgres_admin_dsn, settings.server_start_timeout_s)
            )
        if cancelled():
            raise Stopping("stopped while starting the servers")
        if not _reuse(
            "kafka",
            host,
            ports.kafka,
            infra,
            say,
            lambda: asyncio.run(kafka_topics.list_topics(infra.kafka_bootstrap)),
        ):
            broker = _private_tansu(settings, infra, logs)
            _launch(broker, infra, [])
            broker.wait_ready(settings.server_start_timeout_s, cancelled)
            say(
                f"started kafka (tansu, {settings.kafka_storage} storage) on port {ports.kafka}"
                f" (log: {broker.log_path})"
            )
    except (TimeoutError, ProcessExitedError) as exc:
        infra.stop(escalate)
        raise InfraError(f"{exc}; see the logs under {logs}") from exc
    except BaseException:
        infra.stop(escalate)
        raise
    return infra


def _find_or_launch_dynalite(
    settings: DevstackSettings,
    infra: Infra,
    logs: Path,
    say: Callable[[str], None],
    launched: list[ServerProcess | RedisServer],
) -> None:
    host, port = settings.host, settings.ports.dynalite
    url = infra.dynalite_url = f"http://{host}:{port}"
    if _reuse("dynalite", host, port, infra, say, lambda: check_dynamodb(url)):
        return
    if dynalite_binary() is None:
        raise InfraError(
            "dynalite (DynamoDB's local stand-in) is not installed: run `make dynalite` "
            "(`make up` does when npm is on the PATH), or keep DynamoDB on moto with "
            "URR_DEVSTACK__DYNAMODB=moto"
        )
    _launch(dynalite_server(port, logs / "dynalite.log", host), infra, launched)


def _reuse(
    name: str,
    host: str,
    port: int,
    infra: Infra,
    say: Callable[[str], None],
    check: Callable[[], object],
) -> bool:
    """True when a working server of this kind already listens; an impostor is an error."""
    if not is_listening(host, port):
        return False
    try:
        check()
    except Exception as exc:
        variable = f"URR_DEVSTACK__PORTS__{name.upper()}"
        raise InfraError(
            f"something listens on {host}:{port} but does not answer as {name} ({exc}); "
            f"stop it or move the stack's {name} with {variable}"
        ) from exc
    infra.servers.append(ServerAddress(name, port, started=False))
    say(f"reusing {name} already listening on {host}:{port}")
    return True


def _launch(
    server: ServerProcess | RedisServer,
    infra: Infra,
    launched: list[ServerProcess | RedisServer],
) -> None:
    server.launch()
    infra.started.append(server)
    infra.servers.append(ServerAddress(server.name, server.port, started=True))
    launched.append(server)


def _private_postgres(settings: DevstackSettings, state_dir: Path, logs: Path) -> ServerProcess:
    try:
        return postgres.private_postgres(
            state_dir / "postgres",
            settings.ports.postgres,
            logs / "postgres.log",
            host=settings.host,
            superuser=settings.postgres_user,
            bin_dir=settings.postgres_bin_dir,
            os_user=settings.postgres_os_user,
            start_timeout_s=settings.server_start_timeout_s,
        )
    except postgres.PostgresSetupError as exc:
        raise InfraError(str(exc)) from exc


def _private_tansu(settings: DevstackSettings, infra: Infra, logs: Path) -> ServerProcess:
    if settings.kafka_storage == "memory":
        return tansu_server(settings.ports.kafka, logs / "tansu.log", host=settings.host)
    endpoint = _aws_endpoint(settings, infra.moto_url)

    async def make_bucket() -> None:
        async with aws.open_clients(endpoint) as clients:
            await aws.ensure_bucket(clients.s3, aws.TANSU_BUCKET)

    asyncio.run(make_bucket())
    env = {
        "AWS_ENDPOINT": infra.moto_url,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key,
        "AWS_DEFAULT_REGION": settings.aws_region,
        "AWS_REGION": settings.aws_region,
    }
    return tansu_server(
        settings.ports.kafka,
        logs / "tansu.log",
        storage=f"s3://{aws.TANSU_BUCKET}/",
        env=env,
        host=settings.host,
    )


def check_redis(host: str, port: int) -> None:
    """PING answered with PONG, or raise."""
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = sock.recv(64)
    if not reply.startswith(b"+PONG"):
        raise ConnectionError(f"PING got {reply[:40]!r}")


def check_dynamodb(url: str) -> None:
    """A DynamoDB API answers ListTables (dynalite has no other way to recognise it)."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="urr-local",
        aws_secret_access_key="urr-local",  # noqa: S106 - a stand-in takes any
        config=Config(connect_timeout=3, read_timeout=3, retries={"max_attempts": 1}),
    )
    try:
        client.list_tables(Limit=1)
    finally:
        client.close()


def check_moto(url: str) -> None:
    """moto's own API answers (a real AWS endpoint or another server does not)."""
    # Loopback only: never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/moto-api/config", timeout=3) as response:
            json.loads(response.read())
    except (urllib.error.URLError, ValueError) as exc:
        raise ConnectionError(f"GET /moto-api/config failed: {exc}") from exc
