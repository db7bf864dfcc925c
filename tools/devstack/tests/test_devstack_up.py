"""``urr-devstack up`` end to end: from nothing to ready, then SIGTERM and nothing left behind.

Every port is moved to a free one, so the stack cannot reuse the machine's servers and must
start its own Redis, PostgreSQL, moto and Tansu; its state folder is a temporary one.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import yaml

from urr_common import kafka_topics
from urr_common.tokens import KeySet, load_verification_keys
from urr_devstack import aws
from urr_devstack.infra import check_redis
from urr_devstack.monitoring import alert_queries, unserved_metrics
from urr_devstack.procs import RedisServer, free_port, is_listening
from urr_devstack.runstate import RunState, cmdline, descendants, stop_recorded
from urr_devstack.services import SERVICES
from urr_devstack.stack import READY_BANNER
from urr_devstack.testing import AlertWebhook

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(120)]

SERVER_NAMES = ("redis", "postgres", "kafka", "moto", "dynalite")
REPO = Path(__file__).resolve().parents[3]

#: A service built like the real ones (urr_common settings, app, readiness, serve), added to
#: the table so the whole path runs even before any real service exists: the environment the
#: stack hands over must load, and its servers, database and key files must be usable.
PROBE_SERVICE = """
from __future__ import annotations

import asyncio
import json

import asyncpg
import redis.asyncio as redis
from urr_common.service import READINESS_KEY, create_service_app, serve
from urr_common.settings import (
    AwsSettings, KafkaSettings, PostgresSettings, RedisSettings, ServiceSettings,
    TokenKeySettings, TrustedKeysSettings, load_settings,
)
from urr_common.tokens import SigningKey, load_verification_keys


class ProbeSettings(ServiceSettings):
    redis: RedisSettings
    postgres: PostgresSettings
    kafka: KafkaSettings
    aws: AwsSettings
    access_tokens: TokenKeySettings
    access_trust: TrustedKeysSettings
    entry_tokens: TokenKeySettings
    entry_trust: TrustedKeysSettings
    vwr_tokens: TokenKeySettings
    vwr_trust: TrustedKeysSettings
    bootstrap_admin_email: str
    bootstrap_admin_password: str


async def main() -> None:
    settings = load_settings(ProbeSettings)
    assert settings.environment == "local"
    assert settings.access_tokens.issuer == "urr-auth"
    assert settings.entry_trust.audience == "urr-entry"
    assert settings.entry_trust.jwks_url.endswith("/.well-known/jwks.json")
    for block in (settings.access_tokens, settings.entry_tokens, settings.vwr_tokens):
        SigningKey.from_pem(block.private_key_file.read_bytes(), block.key_id)
    assert len(load_verification_keys(settings.vwr_trust.public_key_files)) == 1
    app = create_service_app(settings)
    client = redis.Redis.from_url(settings.redis.url)

    async def redis_ready() -> None:
        await client.ping()

    async def postgres_ready() -> None:
        connection = await asyncpg.connect(settings.postgres.dsn.get_secret_value())
        try:
            assert await connection.fetchval("SELECT current_database()") == "urr"
        finally:
            await connection.close()

    app[READINESS_KEY].add_check("redis", redis_ready)
    app[READINESS_KEY].add_check("postgres", postgres_ready)
    print("probe: environment loaded", json.dumps(settings.aws.endpoint_url), flush=True)
    try:
        await serve(app, settings.http)
    finally:
        await client.aclose()


asyncio.run(main())
"""

#: Runs ``urr-devstack`` with the probe appended to the real service table.
DRIVER = """
import sys

from urr_devstack import stack
from urr_devstack.__main__ import main
from urr_devstack.services import ServiceSpec

stack.SERVICES = (*stack.SERVICES, ServiceSpec("probe", "urr_devstack_probe", 3099))
sys.exit(main(sys.argv[1:]))
"""


class RunningStack:
    """An ``urr-devstack up`` child process whose output is collected line by line."""

    def __init__(self, env: dict[str, str], *args: str, with_probe: bool = False) -> None:
        self.runfile = Path(env["URR_DEVSTACK__STATE_DIR"]) / "devstack.json"
        script = Path(sys.executable).parent / "urr-devstack"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "urr_devstack"]
        if with_probe:
            # The source names urr_devstack, so the command line still says "devstack":
            # that is how `up` and `down` recognise a running stack.
            command = [sys.executable, "-c", DRIVER]
        self.process = subprocess.Popen(
            [*command, "up", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, marker: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if marker in self.output:
                return
            if self.process.poll() is not None:
                self._reader.join(timeout=2)
                break
            time.sleep(0.1)
        raise AssertionError(f"{marker!r} not printed; output:\n{self.output}")

    def stop(self, timeout_s: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Make sure the stack is gone and the pipe closed (also after a failed assertion)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # What `urr-devstack down` does when `up` could not clean up after itself.
        state = RunState.load(self.runfile)
        if state is not None:
            stop_recorded(state.services + state.servers, timeout_s=10)
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def stack_env() -> Iterator[dict[str, str]]:
    """Environment for a stack on free ports with a state folder of its own."""
    # mkdtemp, not tmp_path: the private PostgreSQL runs as `postgres` when we are root, and
    # pytest's base folder is closed to other users.
    state = Path(tempfile.mkdtemp(prefix="urr-devstack-e2e-"))
    state.chmod(0o755)
    (state / "probe").mkdir()
    (state / "probe" / "urr_devstack_probe.py").write_text(PROBE_SERVICE)
    env = {key: value for key, value in os.environ.items() if not key.startswith("URR_")}
    python_path = [str(state / "probe"), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(python_path),
            "URR_DEVSTACK__STATE_DIR": str(state / ".urr"),
            "URR_DEVSTACK__PORTS__REDIS": str(free_port()),
            "URR_DEVSTACK__PORTS__POSTGRES": str(free_port()),
            "URR_DEVSTACK__PORTS__KAFKA": str(free_port()),
            "URR_DEVSTACK__PORTS__MOTO": str(free_port()),
            "URR_DEVSTACK__PORTS__DYNALITE": str(free_port()),
            "URR_DEVSTACK__SERVICE_PORTS": json.dumps(
                {
                    **{
                        name: free_port()
                        for spec in SERVICES
                        for name, port in spec.listeners().items()
                        if port is not None
                    },
                    "probe": free_port(),
                }
            ),
            "URR_DEVSTACK__READY_TIMEOUT_S": "60",
        }
    )
    try:
        yield env
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def shared_moto(moto_endpoint: str) -> Iterator[str]:
    """The session's moto, emptied after the test: the stack provisions into it."""
    yield moto_endpoint
    url = f"{moto_endpoint}/moto-api/reset"
    request = urllib.request.Request(url, method="POST")  # noqa: S310 - our http URL
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.status == 200


def _port(env: dict[str, str], name: str) -> int:
    return int(env[f"URR_DEVSTACK__PORTS__{name.upper()}"])


async def _check_servers(env: dict[str, str]) -> None:
    import asyncpg

    check_redis("127.0.0.1", _port(env, "redis"))
    connection = await asyncpg.connect(
        f"postgresql://postgres@127.0.0.1:{_port(env, 'postgres')}/urr"
    )
    try:
        assert await connection.fetchval("SELECT 1") == 1
    finally:
        await connection.close()
    topics = await kafka_topics.list_topics(f"127.0.0.1:{_port(env, 'kafka')}")
    assert set(kafka_topics.TOPICS) <= set(topics)
    endpoint = aws.AwsEndpoint(
        f"http://127.0.0.1:{_port(env, 'moto')}",
        dynamodb_url=f"http://127.0.0.1:{_port(env, 'dynalite')}",
    )
    async with aws.open_clients(endpoint) as clients:
        queues = (await clients.sqs.list_queues())["QueueUrls"]
        names = sorted(url.rsplit("/", 1)[1] for url in queues)
        assert names == [aws.TICKET_DLQ, aws.TICKET_QUEUE]
        tables = (await clients.dynamodb.list_tables())["TableNames"]
        assert sorted(tables) == [aws.COUNTERS_TABLE, aws.POSITIONS_TABLE]


def _assert_all_gone(processes: dict[int, str]) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = {pid: line for pid, line in processes.items() if cmdline(pid) == line}
        if not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes left behind: {left}")


def _monitoring_env(webhook: AlertWebhook) -> dict[str, str]:
    """Prometheus and Alertmanager on the stack, fast: targets scraped and rules checked every
    second with ``for: 0s`` (the expressions are the Kubernetes ones), the exporter polling
    every 0.5 s (every service inherits the stack's environment), every receiver posting to
    ``webhook``."""
    return {
        "URR_DEVSTACK__MONITORING__ENABLED": "true",
        "URR_DEVSTACK__MONITORING__PROMETHEUS_PORT": str(free_port()),
        "URR_DEVSTACK__MONITORING__ALERTMANAGER_PORT": str(free_port()),
        "URR_DEVSTACK__MONITORING__SCRAPE_INTERVAL_S": "1",
        "URR_DEVSTACK__MONITORING__EVALUATION_INTERVAL_S": "1",
        "URR_DEVSTACK__MONITORING__RULE_FOR": "0s",
        "URR_DEVSTACK__MONITORING__GROUP_WAIT_S": "0.5",
        "URR_DEVSTACK__MONITORING__WEBHOOK_URL": webhook.url,
        "URR_EXPORTER__POLL_S": "0.5",
    }


def _get(url: str) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as answer:
        body = answer.read()
    return json.loads(body) if body[:1] == b"{" else body.decode()


def _until(what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(0.2)
    return value


def _check_monitoring(env: dict[str, str], webhook: AlertWebhook) -> None:
    """Every target scraped; every metric the dashboards and alerts name served by one of
    them; a dead letter reaching the webhook as UrrDlqNotEmpty (exporter -> the Kubernetes
    rule in Prometheus -> Alertmanager's critical route)."""
    state = Path(env["URR_DEVSTACK__STATE_DIR"])
    config = yaml.safe_load((state / "monitoring" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = {c["labels"]["app"]: c["targets"][0] for c in job["static_configs"]}
    assert {"queue", "vwr-scheduler", "ticket-poller", "ticket-exporter"} <= set(targets)
    prometheus = f"http://127.0.0.1:{env['URR_DEVSTACK__MONITORING__PROMETHEUS_PORT']}"

    def all_up() -> bool:
        active = _get(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        return len(active) == len(targets) and all(t["health"] == "up" for t in active)

    _until("Prometheus scrapes every target", all_up, 30)
    pages = [_get(f"http://{address}/metrics") for address in targets.values()]
    missing = unserved_metrics(REPO, pages)
    assert not missing, f"named in a query, served by no process: {missing}"
    groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    assert loaded == {where.removeprefix("alert ") for where, _ in alert_queries(REPO)}

    assert webhook.firing("UrrDlqNotEmpty") is None
    sqs = boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{_port(env, 'moto')}",
        region_name="us-east-1",
        aws_access_key_id="urr-local",
        aws_secret_access_key="urr-local",
    )
    sent = time.monotonic()
    sqs.send_message(
        QueueUrl=sqs.get_queue_url(QueueName=aws.TICKET_DLQ)["QueueUrl"],
        MessageBody='{"type": "reserve", "reservationId": "poison"}',
        MessageGroupId="evt-1:user-1",
        MessageDeduplicationId=uuid.uuid4().hex,
    )
    notification, alert = _until(
        "UrrDlqNotEmpty reaches the webhook", lambda: webhook.firing("UrrDlqNotEmpty"), 30
    )
    print(f"dead letter -> webhook in {time.monotonic() - sent:.1f}s")
    assert notification["receiver"] == "urr-critical"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["runbook_url"].endswith("#urrdlqnotempty")
    exporter = _get(f"http://{targets['ticket-exporter']}/metrics")
    assert "urr_worker_dlq_messages 1.0" in exporter


def _call(
    method: str, url: str, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any]:
    """One JSON call, without proxies; (status, parsed body or None)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})  # noqa: S310 - http URLs we build
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as refused:
        with refused:
            raw = refused.read()
            return refused.code, json.loads(raw) if raw.startswith(b"{") else None


def _check_identity_wiring(
    stack_env: dict[str, str], state: Path, password: str, output: str
) -> None:
    """Issue 16 on the real processes: the queue believes only the gateway's assertion, and
    its /internal routes are on the internal listener with the ticket credential, which the
    seed used to configure the demo event."""
    ports = json.loads(stack_env["URR_DEVSTACK__SERVICE_PORTS"])
    identity = state / "keys" / "identity"
    assert (identity / "local-1.pem").stat().st_mode & 0o077 == 0
    assert (identity / "public" / "local-1.pem").exists()
    assert "seed-demo: done" in output
    assert "NOT configured" not in output
    queue = f"http://127.0.0.1:{ports['queue']}"
    liar = {"X-User-Id": "admin-1", "X-User-Role": "admin"}
    status, problem = _call("GET", f"{queue}/api/v1/admin/queue/demo", liar)
    assert (status, problem["code"]) == (401, "identity_required")
    complete = "/internal/v1/queue/demo/complete"
    assert _call("POST", queue + complete, {}, {"userId": "u-1"})[0] == 404
    internal = f"http://127.0.0.1:{ports['queue-internal']}"
    assert _call("POST", internal + complete, {}, {"userId": "u-1"})[0] == 401
    secret = (state / "secrets" / "queue-ticket").read_text().strip()
    bearer = {"Authorization": f"Bearer {secret}"}
    assert _call("POST", internal + complete, bearer, {"userId": "u-1"}) == (
        200,
        {"released": False},
    )
    # Through the gateway the admin's token becomes an assertion the queue accepts.
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    login = {"email": "admin@urr.local", "password": password}
    status, session = _call("POST", f"{gateway}/api/v1/auth/login", {}, login)
    assert status == 200, session
    admin = {"Authorization": f"Bearer {session['access_token']}"}
    status, event = _call("GET", f"{gateway}/api/v1/admin/queue/demo", admin)
    assert status == 200, event
    assert event["event_id"] == "demo"


# Servers from nothing, then every service, on a starved 2-core host: see the waits below.
@pytest.mark.timeout(300)
def test_devstack_up_starts_from_nothing_and_stops_cleanly(
    stack_env: dict[str, str], alert_webhook: AlertWebhook
) -> None:
    ports = [_port(stack_env, name) for name in SERVER_NAMES]
    assert not any(is_listening("127.0.0.1", port) for port in ports)
    # With monitoring: Prometheus and Alertmanager start with the stack and stop with it.
    stack_env.update(_monitoring_env(alert_webhook))
    stack = RunningStack(stack_env, with_probe=True)
    try:
        # Servers from nothing, every service, Prometheus and Alertmanager on two shared cores.
        # The services' readiness limit (READY_TIMEOUT_S, 60 s) counts from their launch, so
        # the wait for the banner does too: counted from the spawn, a loaded run (load ~19)
        # spent about 60 s on initdb, Tansu, moto, dynalite and the monitoring servers and
        # gave up 25 s into the services' start, before the stack's own verdict. After the
        # last service is ready the stack still runs its setup tasks (seed data, queues)
        # before the banner: more than 28 s in a loaded run (last ready 47 s after launch).
        stack.wait_for(" started (pid=", 120)
        stack.wait_for(READY_BANNER, 120)
        assert "probe is ready" in stack.output
        # The processes wired in last: the stack waits for their /health/ready too.
        for name in ("admission-log", "ratelimit-admin", "ticket-exporter"):
            assert f"{name} is ready" in stack.output
        for name in ("redis", "postgres", "moto", "dynalite", "kafka"):
            assert f"started {name}" in stack.output
        assert "reusing" not in stack.output
        started = descendants(stack.process.pid)
        assert any("redis-server" in line for line in started.values())
        assert any("tansu" in line for line in started.values())
        assert any("urr_devstack_probe" in line for line in started.values())
        asyncio.run(_check_servers(stack_env))

        state = Path(stack_env["URR_DEVSTACK__STATE_DIR"])
        for kind in ("access", "entry", "vwr", "log"):
            assert (state / "keys" / kind / "local-1.pem").stat().st_mode & 0o077 == 0
            assert (state / "keys" / kind / "public" / "local-1.pem").exists()
        # The public log through the gateway publishes the stack's log key.
        gateway = json.loads(stack_env["URR_DEVSTACK__SERVICE_PORTS"])["gateway"]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        jwks_url = f"http://127.0.0.1:{gateway}/v1/log/jwks.json"
        with opener.open(jwks_url, timeout=10) as response:
            published = KeySet.from_jwks(json.loads(response.read()))
        (log_key,) = load_verification_keys([state / "keys" / "log" / "public" / "local-1.pem"])
        assert published.to_jwks() == KeySet([log_key]).to_jwks()
        # Tier 1 answers only calls that came through the edge (its origin-verify secret):
        # reaching the API emulator directly is refused, as the REGIONAL API is in AWS.
        ports_of = json.loads(stack_env["URR_DEVSTACK__SERVICE_PORTS"])
        direct = f"http://127.0.0.1:{ports_of['vwr-apigw']}/vwr/status/no-such-event"
        with pytest.raises(urllib.error.HTTPError) as refused:
            opener.open(direct, timeout=10)
        with refused.value as answer:  # an HTTPError holds the socket until closed
            assert answer.code == 403
            assert json.loads(answer.read())["code"] == "origin_forbidden"
        via_edge = f"http://127.0.0.1:{ports_of['vwr-edge']}/vwr-api/vwr/status/no-such-event"
        with pytest.raises(urllib.error.HTTPError) as unknown:
            opener.open(via_edge, timeout=10)
        with unknown.value as answer:
            assert answer.code == 404
        assert "started prometheus" in stack.output
        assert "started alertmanager" in stack.output
        assert any("prometheus-alertmanager" in line for line in started.values())
        checked = time.monotonic()
        _check_monitoring(stack_env, alert_webhook)
        print(f"monitoring checks: {time.monotonic() - checked:.1f}s")
        password = (state / "admin-password").read_text().strip()
        assert f"admin@urr.local / {password}" in stack.output
        _check_identity_wiring(stack_env, state, password, stack.output)
        assert json.loads((state / "devstack.json").read_text())["phase"] == "ready"

        code = stack.stop()
    finally:
        stack.kill()
    assert code == 0, stack.output
    _assert_all_gone(started)
    assert not any(is_listening("127.0.0.1", port) for port in ports)
    for name in ("PROMETHEUS", "ALERTMANAGER"):
        assert not is_listening(
            "127.0.0.1", int(stack_env[f"URR_DEVSTACK__MONITORING__{name}_PORT"])
        )
    assert not (state / "devstack.json").exists()


def test_devstack_second_run_reuses_servers_already_listening(
    stack_env: dict[str, str],
    redis_server: RedisServer,
    postgres_admin_dsn: str,
    kafka_bootstrap: str,
    shared_moto: str,
    dynalite_endpoint: str,
) -> None:
    """Pointed at servers already listening (this session's), up starts none and stops none."""
    pg = urlsplit(postgres_admin_dsn)
    database = f"urr_devstack_{uuid.uuid4().hex[:12]}"
    env = {
        **stack_env,
        "URR_DEVSTACK__PORTS__REDIS": str(redis_server.port),
        "URR_DEVSTACK__PORTS__POSTGRES": str(pg.port),
        "URR_DEVSTACK__PORTS__KAFKA": kafka_bootstrap.rsplit(":", 1)[1],
        "URR_DEVSTACK__PORTS__MOTO": shared_moto.rsplit(":", 1)[1],
        "URR_DEVSTACK__PORTS__DYNALITE": dynalite_endpoint.rsplit(":", 1)[1],
        "URR_DEVSTACK__POSTGRES_DATABASE": database,
    }
    stack = RunningStack(env, "--no-services", with_probe=True)
    try:
        stack.wait_for(READY_BANNER, 60)
        for name in SERVER_NAMES:
            assert f"reusing {name} already listening" in stack.output
        assert "started " not in stack.output
        assert f"created database {database}" in stack.output
        assert descendants(stack.process.pid) == {}
        code = stack.stop()
    finally:
        stack.kill()
        asyncio.run(_drop_database(postgres_admin_dsn, database))
    assert code == 0, stack.output
    # It stopped nothing it had not started: the session's servers serve on.
    assert redis_server.running
    check_redis("127.0.0.1", redis_server.port)
    assert kafka_topics.TOPICS[0] in asyncio.run(kafka_topics.list_topics(kafka_bootstrap))
    assert is_listening("127.0.0.1", int(env["URR_DEVSTACK__PORTS__MOTO"]))


async def _drop_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def _with_session_moto_and_kafka(
    env: dict[str, str], moto_endpoint: str, kafka_bootstrap: str
) -> dict[str, str]:
    """Reuse this session's moto and Tansu: the test is about the servers it still starts."""
    return {
        **env,
        "URR_DEVSTACK__PORTS__MOTO": moto_endpoint.rsplit(":", 1)[1],
        "URR_DEVSTACK__PORTS__KAFKA": kafka_bootstrap.rsplit(":", 1)[1],
    }


def test_devstack_sigterm_while_starting_stops_what_was_started(
    stack_env: dict[str, str], shared_moto: str, kafka_bootstrap: str
) -> None:
    env = _with_session_moto_and_kafka(stack_env, shared_moto, kafka_bootstrap)
    stack = RunningStack(env, with_probe=True)
    try:
        stack.wait_for("started redis", 60)
        started = descendants(stack.process.pid)
        assert any("redis-server" in line for line in started.values())
        code = stack.stop()
    finally:
        stack.kill()
    assert code == 0, stack.output
    assert "stopped on request while starting" in stack.output
    assert READY_BANNER not in stack.output
    _assert_all_gone(started)
    assert not is_listening("127.0.0.1", _port(env, "redis"))
    assert not is_listening("127.0.0.1", _port(env, "postgres"))


def test_devstack_a_server_dying_stops_the_stack_with_an_error(
    stack_env: dict[str, str], shared_moto: str, kafka_bootstrap: str
) -> None:
    env = _with_session_moto_and_kafka(stack_env, shared_moto, kafka_bootstrap)
    stack = RunningStack(env, "--no-services", with_probe=True)
    try:
        stack.wait_for(READY_BANNER, 60)
        started = descendants(stack.process.pid)
        redis_pid = next(pid for pid, line in started.items() if "redis-server" in line)
        os.kill(redis_pid, signal.SIGKILL)
        code = stack.process.wait(timeout=30)
    finally:
        stack.kill()
    assert code == 1, stack.output
    assert "a server we started has stopped: redis" in stack.output
    _assert_all_gone(started)
