"""docker-compose.yml, parsed and checked against the services' settings (docker never runs)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from urr_deploycheck.compose import check, container_env, health_port
from urr_deploycheck.derive import workload_settings
from urr_deploycheck.services import (
    DYNAMODB_TABLES,
    INFRA,
    KAFKA_TOPICS,
    SQS_QUEUES,
    WORKLOADS,
    Target,
    workload,
)
from urr_gateway.trust import ProxyTrust

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with (REPO / "docker-compose.yml").open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    return loaded


def test_compose_matches_the_settings_of_every_service(compose):
    result = check(compose)
    assert result.problems == []
    calls = {(c.service, c.endpoint.field, c.callee) for c in result.calls}
    # A few calls that must be there, so an empty derivation cannot pass.
    assert ("gateway", "upstreams.ticket", "ticket") in calls
    assert ("gateway", "entry_trust.jwks_url", "queue") in calls
    assert ("vwr-edge", "api_url", "vwr-apigw") in calls
    assert ("ticket-poller", "aws.endpoint_url", "moto") in calls
    assert ("provision-kafka", "calls", "kafka") in calls


def test_every_service_of_the_table_and_every_local_server_is_there(compose):
    names = set(compose["services"])
    assert {w.name for w in WORKLOADS if Target.COMPOSE in w.targets} <= names
    assert {i.name for i in INFRA if Target.COMPOSE in i.targets} <= names
    for infra in INFRA:
        if Target.COMPOSE in infra.targets:
            assert compose["services"][infra.name]["image"] == infra.image


def test_urr_containers_run_unprivileged_on_a_read_only_root(compose):
    for entry in WORKLOADS:
        service = compose["services"][entry.name]
        assert service["user"] == "1000:1000"
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]  # noqa: S108 - a path inside the container
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        env = container_env(entry, service)
        drain = float(env["URR_HTTP__DRAIN_DELAY_S"]) + float(env["URR_HTTP__SHUTDOWN_TIMEOUT_S"])
        assert float(service["stop_grace_period"].rstrip("s")) > drain


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(compose):
    for name, service in compose["services"].items():
        if name.startswith("provision-"):
            assert service["restart"] == "no"
        else:
            assert service.get("healthcheck"), name


def test_the_edge_is_the_published_entrance(compose):
    published = {name: service.get("ports", []) for name, service in compose["services"].items()}
    assert published["vwr-edge"] == ["8000:8000"]
    # Issue 16: only the public entry points reach the host; the services behind the gateway
    # (and the API Gateway stand-in behind the edge) stay on the compose network.
    reachable = {name for name, ports in published.items() if ports}
    assert reachable == {"vwr-edge", "gateway", "prometheus"}
    assert published["prometheus"] == ["127.0.0.1:9090:9090"]
    # Third-party servers stay on the compose network (the host may run its own Redis etc.).
    for infra in INFRA:
        assert not published[infra.name], infra.name


def test_provisioning_scripts_create_what_the_services_name(compose):
    mounts = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])}
    scripts = REPO / "k8s/components/provision/scripts"
    assert "./k8s/components/provision/scripts" in mounts
    kafka = (scripts / "kafka-topics.sh").read_text(encoding="utf-8")
    aws = (scripts / "aws-resources.sh").read_text(encoding="utf-8")
    for topic in KAFKA_TOPICS:
        assert topic in kafka
    for name in (*SQS_QUEUES, *DYNAMODB_TABLES):
        assert name in aws


def test_tier1_processes_use_the_tables_provisioning_creates(compose):
    users = 0
    for entry in WORKLOADS:
        if entry.name not in compose["services"]:
            continue
        env = container_env(entry, compose["services"][entry.name])
        for settings in workload_settings(entry, env):
            tables = getattr(settings, "tables", None)
            if tables is None:
                continue
            users += 1
            assert (tables.counters, tables.positions) == DYNAMODB_TABLES, entry.name
    assert users >= 2  # the API emulator and the scheduler's advancer


# --- the checker catches what it should -----------------------------------------------------


def _problems(compose: dict[str, Any], change) -> list[str]:
    broken = copy.deepcopy(compose)
    change(broken["services"])
    return check(broken).problems


def test_a_missing_dependency_is_reported(compose):
    def drop(services):
        del services["gateway"]["depends_on"]["ticket"]

    assert _problems(compose, drop) == ["gateway: calls ticket without depends_on service_healthy"]


def test_a_wrong_upstream_port_is_reported(compose):
    def wrong(services):
        services["gateway"]["environment"]["URR_UPSTREAMS__AUTH"] = "http://auth:3006"

    assert _problems(compose, wrong) == ["gateway: upstreams.auth calls auth:3006, not its port"]


def test_a_healthcheck_on_the_wrong_port_is_reported(compose):
    def wrong(services):
        services["queue"]["healthcheck"]["test"][-1] = services["queue"]["healthcheck"]["test"][
            -1
        ].replace("3007", "3001")

    assert health_port(compose["services"]["queue"]) == 3007
    assert _problems(compose, wrong) == ["queue: healthcheck does not ask /health/ready on 3007"]


def test_a_partial_http_override_is_reported(compose):
    def partial(services):
        del services["auth"]["environment"]["URR_HTTP__PORT"]

    # The image sets the port, so dropping the compose value alone is harmless ...
    assert _problems(compose, partial) == []

    def reset(services):
        services["auth"]["environment"]["URR_HTTP__PORT"] = "8080"

    assert "auth: settings listen on port 8080, table says 3005" in _problems(compose, reset)


def test_using_kafka_before_the_topics_exist_is_reported(compose):
    def early(services):
        del services["queue"]["depends_on"]["provision-kafka"]

    assert _problems(compose, early) == ["queue: uses kafka before provision-kafka completed"]


def test_a_local_default_is_not_a_compose_service(compose):
    def forgotten(services):
        del services["vwr-edge"]["environment"]["URR_API_URL"]

    assert _problems(compose, forgotten) == [
        "vwr-edge: api_url names '127.0.0.1', not a compose service"
    ]


def test_a_dependency_cycle_is_reported(compose):
    def cycle(services):
        services["queue"]["depends_on"]["gateway"] = {"condition": "service_healthy"}

    assert _problems(compose, cycle) == ["dependency cycle: gateway -> queue -> gateway"]


def test_workload_lookup():
    assert workload("gateway").port == 3001
    with pytest.raises(KeyError):
        workload("nope")


def test_prometheus_scrapes_every_metrics_listener_which_is_never_published(compose):
    """Issue 16: /metrics was on every public port. Each process's metrics listener (its own
    settings decide the port) is what monitoring/prometheus.yml scrapes, on the compose
    network only."""
    scrape = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text(encoding="utf-8"))
    targets = {
        target
        for job in scrape["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    expected = set()
    for entry in WORKLOADS:
        service = compose["services"][entry.name]
        settings = workload_settings(entry, container_env(entry, service))[0]
        metrics = settings.metrics  # type: ignore[attr-defined]
        assert metrics.host == "0.0.0.0", entry.name
        port = settings.metrics_port  # type: ignore[attr-defined]
        assert port != settings.http.port  # type: ignore[attr-defined]
        published = [str(p).split(":")[-1] for p in service.get("ports", [])]
        assert str(port) not in published, entry.name
        expected.add(f"{entry.name}:{port}")
    assert targets == expected


def test_the_gateway_trusts_forwarded_addresses_from_the_edge_alone(compose):
    """Issue 16: compose trusted one X-Forwarded-For hop from anyone, and published the
    gateway's port, so a caller on port 3001 named its own address (200 of 200 logins passed
    AUTH's 20/min). Now only the edge stand-in's fixed address may write the header."""
    gateway = workload("gateway")
    settings = workload_settings(gateway, container_env(gateway, compose["services"]["gateway"]))
    trust = settings[0].trust  # type: ignore[attr-defined]
    edge = compose["services"]["vwr-edge"]["networks"]["default"]["ipv4_address"]
    assert [str(network) for network in trust.proxy_cidrs] == [f"{edge}/32"]
    proxies = ProxyTrust(trust.proxy_cidrs)
    # Through the published port the peer is the docker bridge (or the host): not trusted.
    direct = proxies.client("172.30.0.1", ["198.51.100.7"])
    assert direct.ip == "172.30.0.1"
    via_edge = proxies.client(edge, ["198.51.100.7"])
    assert via_edge.ip == "198.51.100.7"


def _interpolated(value: str) -> str:
    """What compose makes of ``${NAME:-default}`` when NAME is unset."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_upstreams_trust_the_identity_key_made_before_they_start(compose):
    services = compose["services"]
    provision = services["provision-identity"]
    assert provision["restart"] == "no"
    gateway_env = container_env(workload("gateway"), services["gateway"])
    private = gateway_env["URR_IDENTITY__PRIVATE_KEY_FILE"]
    assert provision["environment"]["URR_IDENTITY__PRIVATE_KEY_FILE"] == private
    public_glob = str(Path(private).parent / "public" / "*.pem")
    for name in ("auth", "queue", "ticket", "ratelimit-admin"):
        env = container_env(workload(name), services[name])
        assert env["URR_IDENTITY__PUBLIC_KEY_FILES"] == f'["{public_glob}"]', name
        assert "URR_IDENTITY__PRIVATE_KEY_FILE" not in env, name
        assert "urr-state:/app/.urr" in services[name]["volumes"], name
        waits = {name}
        while "provision-identity" not in waits:
            before = set(waits)
            for waiting in before:
                waits |= set(services[waiting].get("depends_on") or {})
            assert waits != before, f"{name} may start before provision-identity"


def test_only_the_ticket_processes_hold_the_queue_credential(compose):
    services = compose["services"]
    queue = container_env(workload("queue"), services["queue"])
    callers = json.loads(_interpolated(queue["URR_INTERNAL__CALLERS"]))
    assert queue["URR_INTERNAL__PORT"] == "5007"
    assert not services["queue"].get("ports")  # the compose network only
    for name in ("ticket", "ticket-outcomes"):
        env = container_env(workload(name), services[name])
        secret = _interpolated(env["URR_QUEUE_CREDENTIAL__SECRET"])
        assert callers[env["URR_QUEUE_CREDENTIAL__NAME"]] == secret
        assert env["URR_QUEUE_COMPLETION__BASE_URL"] == "http://queue:5007"
    holders = {
        name
        for name, service in services.items()
        if "URR_QUEUE_CREDENTIAL__SECRET" in (service.get("environment") or {})
    }
    assert holders == {"ticket", "ticket-outcomes"}
