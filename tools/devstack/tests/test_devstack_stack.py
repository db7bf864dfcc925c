"""What ``up`` hands every service and what it prints (pure: no servers)."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

from urr_devstack.infra import Infra, ServerAddress
from urr_devstack.keys import KEY_KINDS, LocalKey
from urr_devstack.procs import free_port
from urr_devstack.services import PlannedService, ServiceSpec
from urr_devstack.settings import DevstackSettings, ServerPorts
from urr_devstack.stack import (
    READY_BANNER,
    StatePaths,
    banner,
    busy_service_ports,
    common_env,
    credential_env,
    urls,
)

SETTINGS = DevstackSettings(
    ports=ServerPorts(redis=16379, postgres=15432, kafka=19092, moto=15000),
    state_dir=Path("/state"),
)
INFRA = Infra(
    host="127.0.0.1",
    redis_url="redis://127.0.0.1:16379/0",
    postgres_admin_dsn="postgresql://postgres@127.0.0.1:15432/postgres",
    kafka_bootstrap="127.0.0.1:19092",
    moto_url="http://127.0.0.1:15000",
    servers=[ServerAddress("redis", 16379, started=False), ServerAddress("moto", 15000, True)],
)
KEYS = {
    kind: LocalKey(
        kind, "local-1", Path(f"/k/{kind}/local-1.pem"), Path(f"/k/{kind}/public/local-1.pem")
    )
    for kind in KEY_KINDS
}


def test_devstack_common_env_follows_the_conventions() -> None:
    env = common_env(SETTINGS, INFRA, KEYS, "s3cret-pass", {"auth": 14005, "queue": 14007})
    assert env["URR_ENVIRONMENT"] == "local"
    assert env["URR_REDIS__URL"] == "redis://127.0.0.1:16379/0"
    assert env["URR_POSTGRES__DSN"] == "postgresql://postgres@127.0.0.1:15432/urr"
    assert env["URR_KAFKA__BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert env["URR_AWS__ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:15000"
    # No dynalite in INFRA: DynamoDB stays on moto (URR_DEVSTACK__DYNAMODB=moto).
    assert env["URR_AWS__DYNAMODB_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_DYNAMODB"]
    assert env["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:15000"
    with_dynalite = replace(INFRA, dynalite_url="http://127.0.0.1:14567")
    split = common_env(SETTINGS, with_dynalite, KEYS, "s3cret-pass", {})
    assert split["URR_AWS__ENDPOINT_URL"] == "http://127.0.0.1:15000"
    assert split["URR_AWS__DYNAMODB_ENDPOINT_URL"] == "http://127.0.0.1:14567"
    assert split["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:14567"
    assert env["URR_AWS__REGION"] == "us-east-1"
    assert env["URR_ACCESS_TOKENS__PRIVATE_KEY_FILE"] == "/k/access/local-1.pem"
    assert env["URR_ACCESS_TOKENS__KEY_ID"] == "local-1"
    assert (env["URR_ACCESS_TOKENS__ISSUER"], env["URR_ACCESS_TOKENS__AUDIENCE"]) == (
        "urr-auth",
        "urr",
    )
    assert (env["URR_ENTRY_TRUST__ISSUER"], env["URR_ENTRY_TRUST__AUDIENCE"]) == (
        "urr-queue",
        "urr-entry",
    )
    assert env["URR_VWR_TOKENS__ISSUER"] == env["URR_VWR_TRUST__AUDIENCE"] == "urr-vwr"
    assert env["URR_ACCESS_TRUST__JWKS_URL"] == "http://127.0.0.1:14005/.well-known/jwks.json"
    assert env["URR_ENTRY_TRUST__JWKS_URL"] == "http://127.0.0.1:14007/.well-known/jwks.json"
    assert json.loads(env["URR_VWR_TRUST__PUBLIC_KEY_FILES"]) == ["/k/vwr/public/local-1.pem"]
    assert env["URR_BOOTSTRAP_ADMIN_EMAIL"] == "admin@urr.local"
    assert env["URR_BOOTSTRAP_ADMIN_PASSWORD"] == "s3cret-pass"
    # Every upstream verifies the gateway's identity assertions with its public key.
    assert json.loads(env["URR_IDENTITY__PUBLIC_KEY_FILES"]) == ["/k/identity/public/local-1.pem"]
    assert "URR_IDENTITY__PRIVATE_KEY_FILE" not in env
    assert "URR_INTERNAL__CALLERS" not in env
    assert "URR_QUEUE_CREDENTIAL__SECRET" not in env


def test_devstack_credentials_go_to_their_two_sides_only() -> None:
    ticket, check = "t" * 64, "c" * 64
    by_name = credential_env(ticket, check)
    assert json.loads(by_name["queue"]["URR_INTERNAL__CALLERS"]) == {"ticket": ticket}
    assert json.loads(by_name["gateway"]["URR_INTERNAL__CALLERS"]) == {"loadtest": check}
    holders = {name for name, env in by_name.items() if ticket in env.values()} - {"queue"}
    assert holders == {"ticket", "ticket-outcomes", "seed-demo"}
    for name in holders:
        assert by_name[name]["URR_QUEUE_CREDENTIAL__NAME"] == "ticket"


def test_devstack_banner_lists_entry_points_first_and_marks_reused_servers() -> None:
    planned = [
        PlannedService("auth", "urr_auth", 3005, "http://127.0.0.1:3005/health/ready", {}),
        PlannedService("worker", "w", None, None, {}),
        PlannedService("gateway", "urr_gateway", 3001, "http://127.0.0.1:3001/health/ready", {}),
        PlannedService("vwr-edge", "e", 8000, "http://127.0.0.1:8000/health/ready", {}),
    ]
    shown = urls(SETTINGS, INFRA, planned)
    assert list(shown)[:3] == ["vwr-edge", "gateway", "auth"]
    assert "worker" not in shown
    text = banner(shown, "admin@urr.local", "pw", StatePaths(Path("/state")), ["redis"])
    lines = text.splitlines()
    assert lines[0] == READY_BANNER
    assert any(line.split() == ["vwr-edge", "http://127.0.0.1:8000"] for line in lines)
    assert any("redis://127.0.0.1:16379/0" in line and "already running" in line for line in lines)
    assert not any("moto" in line and "already running" in line for line in lines)
    assert "admin login: admin@urr.local / pw" in text


def test_devstack_busy_service_port_is_found_before_anything_starts() -> None:
    table = (
        ServiceSpec("web", "installed", 3001, extra_ports={"internal": 3011}),
        ServiceSpec("absent", "not_installed", 3002),
        ServiceSpec("skipped", "installed", 3003),
        ServiceSpec("worker", "installed"),
    )
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        settings = DevstackSettings(skip_services=["skipped"])
        ports = {
            "web": taken,
            "web-internal": taken,
            "absent": taken,
            "skipped": taken,
            "worker": None,
        }
        busy = busy_service_ports(settings, ports, table, runnable=lambda m: m == "installed")
    assert busy == [f"web (127.0.0.1:{taken})", f"web-internal (127.0.0.1:{taken})"]
    free = {"web": free_port(), "web-internal": None, "absent": None, "skipped": None}
    assert busy_service_ports(settings, free, table, runnable=lambda m: True) == []
