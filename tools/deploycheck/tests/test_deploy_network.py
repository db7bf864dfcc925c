"""NetworkPolicies open exactly the connections the services' settings make, nothing else."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings

from urr_common.settings import (
    AwsSettings,
    HttpSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    ServiceSettings,
    TrustedKeysSettings,
)
from urr_deploycheck.derive import derive, listener_problems, workload_settings
from urr_deploycheck.endpoints import (
    Endpoint,
    SettingsImportError,
    endpoints,
    import_settings_class,
    parse_address,
    settings_from_env,
)
from urr_deploycheck.manifests import Manifest, label_selector_matches, pod_templates, render
from urr_deploycheck.netpol import Grant, policy_grants
from urr_deploycheck.services import (
    AWS_API_HOST,
    NETWORKS,
    OVERLAYS,
    WORKLOADS,
    Network,
    workload,
)

K8S = Path(__file__).resolve().parents[3] / "k8s"


@cache
def rendered(overlay: str) -> tuple[Manifest, ...]:
    return tuple(render(K8S / "overlays" / overlay))


def _diff(needed: set[Grant], granted: set[Grant]) -> str:
    missing = "\n  ".join(sorted(map(str, needed - granted)))
    extra = "\n  ".join(sorted(map(str, granted - needed)))
    return f"missing:\n  {missing}\nnot needed:\n  {extra}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policies_allow_exactly_what_the_settings_call(overlay):
    docs = list(rendered(overlay))
    derivation = derive(docs, NETWORKS.get(overlay, Network()))
    assert derivation.problems == []
    granted = policy_grants(docs, pod_templates(docs))
    assert derivation.grants == granted, _diff(derivation.grants, granted)
    # The derivation found real calls, not an empty set matching empty policies.
    callers = {call.workload for call in derivation.calls}
    assert {"gateway", "queue", "ticket", "auth"} <= callers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_policy_selects_a_pod(overlay):
    # A policy selecting nothing opens nothing today and something unexpected tomorrow.
    docs = rendered(overlay)
    labels = [p.labels for p in pod_templates(docs)]
    # Pods the Prometheus Operator makes for an Alertmanager resource carry these labels.
    labels += [
        {"alertmanager": d["metadata"]["name"], "app.kubernetes.io/name": "alertmanager"}
        for d in docs
        if d["kind"] == "Alertmanager"
    ]
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]
        assert any(label_selector_matches(selector, pod) for pod in labels), policy["metadata"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_deny_isolates_every_pod_both_ways(overlay):
    docs = rendered(overlay)
    deny = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "default-deny-all"
    ]
    assert len(deny) == 1
    spec = deny[0]["spec"]
    assert spec["podSelector"] == {}
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in spec
    assert "egress" not in spec


def test_gateway_reaches_its_upstreams_and_redis_in_kind():
    docs = list(rendered("kind"))
    derivation = derive(docs, Network())
    gateway_calls = {
        (c.endpoint.field, c.targets) for c in derivation.calls if c.workload == "gateway"
    }
    assert ("upstreams.ticket", ("pod:ticket 3002/TCP",)) in gateway_calls
    assert ("entry_trust.jwks_url", ("pod:queue 3007/TCP",)) in gateway_calls
    assert ("redis.url", ("pod:redis 6379/TCP",)) in gateway_calls


# --- the machinery, on a small made-up deployment -------------------------------------------


class _Upstream(BaseModel):
    url: str = "http://127.0.0.1:9000"


class FakeSettings(ServiceSettings):
    """A process that calls one upstream, Redis, PostgreSQL, Kafka and the AWS APIs."""

    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3001))
    upstream: _Upstream = Field(default_factory=_Upstream)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)
    trust: TrustedKeysSettings = Field(default_factory=TrustedKeysSettings)


FAKE_PATH = "urr_not_installed.settings:FakeSettings"
FAKE_TICKET_PATH = "urr_not_installed.settings:TicketFake"


def _deployment(name: str, port: int, env: dict[str, str]) -> Manifest:
    labels = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": name,
                            "ports": [
                                {"name": "http", "containerPort": port},
                                {"name": "metrics", "containerPort": 9464},
                            ],
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        }
                    ]
                },
            },
        },
    }


def _service(name: str, port: int, target: int | str = "http") -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"port": port, "targetPort": target}],
        },
    }


def _policy(name: str, spec: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


METRICS_ENV = {"URR_METRICS__HOST": "0.0.0.0", "URR_METRICS__PORT": "9464"}
FAKE_ENV = {
    **METRICS_ENV,
    "URR_HTTP__HOST": "0.0.0.0",
    "URR_HTTP__PORT": "3001",
    "URR_UPSTREAM__URL": "http://ticket.urr.svc.cluster.local:3002/api",
    "URR_REDIS__URL": "rediss://redis.example.internal:6379/0",
    # A file the pod mounts; settings do not look for it (the clients do, at start-up).
    "URR_REDIS__CA_FILE": "/etc/urr/ca/data-ca.pem",
    "URR_POSTGRES__DSN": "postgresql://app@pg.example.internal:5432/urr?sslmode=require",
    "URR_KAFKA__BOOTSTRAP_SERVERS": "k1.example.internal:9092,k2.example.internal:9092",
}
FAKE_NETWORK = Network(
    {
        "redis.example.internal": "10.9.30.0/23",
        "pg.example.internal": "10.9.20.0/23",
        "k1.example.internal": "10.9.40.0/23",
        "k2.example.internal": "10.9.40.0/23",
        AWS_API_HOST: "10.9.10.0/23",
    }
)


def _egress_ip(cidr: str, port: int) -> dict[str, Any]:
    return {"to": [{"ipBlock": {"cidr": cidr}}], "ports": [{"port": port, "protocol": "TCP"}]}


def _fake_docs() -> list[Manifest]:
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
    }
    gateway = {"matchLabels": {"app.kubernetes.io/name": "gateway"}}
    ticket = {
        "matchExpressions": [
            {"key": "app.kubernetes.io/name", "operator": "In", "values": ["ticket"]}
        ]
    }
    scrape = {
        "from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
        "ports": [{"port": "metrics"}],
    }
    return [
        _deployment("gateway", 3001, FAKE_ENV),
        _deployment(
            "ticket", 3002, {**METRICS_ENV, "URR_HTTP__HOST": "0.0.0.0", "URR_HTTP__PORT": "3002"}
        ),
        _service("ticket", 3002),
        _policy("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        _policy("dns", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [dns]}),
        _policy("scrape", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [scrape]}),
        _policy("public", {"podSelector": gateway, "ingress": [{"ports": [{"port": 3001}]}]}),
        _policy(
            "gateway-out",
            {
                "podSelector": gateway,
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"podSelector": ticket}], "ports": [{"port": "http"}]},
                    _egress_ip("10.9.30.0/23", 6379),
                    _egress_ip("10.9.20.0/23", 5432),
                    _egress_ip("10.9.40.0/23", 9092),
                    _egress_ip("10.9.10.0/23", 443),
                ],
            },
        ),
        _policy(
            "ticket-in",
            {
                "podSelector": ticket,
                "ingress": [{"from": [{"podSelector": gateway}], "ports": [{"port": 3002}]}],
            },
        ),
    ]


@pytest.fixture
def fake_table(monkeypatch):
    """Swap the table for two processes whose settings are ``FakeSettings`` and ``TicketFake``
    (made-up module paths: a real, installed module would win over them)."""
    import urr_deploycheck.derive as derive_module

    gateway, ticket = workload("gateway"), workload("ticket")
    fakes = (
        type(gateway)(
            gateway.name, gateway.image, gateway.module, (FAKE_PATH,), 3001, gateway.targets
        ),
        type(ticket)(
            ticket.name,
            ticket.image,
            ticket.module,
            (FAKE_TICKET_PATH,),
            3002,
            ticket.targets,
        ),
    )
    monkeypatch.setattr(derive_module, "WORKLOADS", fakes)
    return fakes


class TicketFake(ServiceSettings):
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3002))


FAKE_CLASSES: dict[str, type[BaseSettings]] = {
    FAKE_PATH: FakeSettings,
    FAKE_TICKET_PATH: TicketFake,
}


def test_derivation_matches_policies_that_open_exactly_the_calls(fake_table):
    docs = _fake_docs()
    derivation = derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES)
    assert derivation.problems == []
    granted = policy_grants(docs, pod_templates(docs))
    assert derivation.grants == granted, _diff(derivation.grants, granted)
    fields = {c.endpoint.field for c in derivation.calls}
    assert fields == {
        "upstream.url",
        "redis.url",
        "postgres.dsn",
        "kafka.bootstrap_servers",
        "aws.endpoint_url",
    }


def test_a_call_the_policies_do_not_open_is_reported(fake_table):
    docs = _fake_docs()
    gateway_out = next(d for d in docs if d["metadata"]["name"] == "gateway-out")
    del gateway_out["spec"]["egress"][2]  # PostgreSQL
    derivation = derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES)
    missing = derivation.grants - policy_grants(docs, pod_templates(docs))
    assert {str(g) for g in missing} == {"gateway -> ip:10.9.20.0/23 5432/TCP"}


def test_an_opening_nobody_needs_is_reported(fake_table):
    docs = _fake_docs()
    ticket_in = next(d for d in docs if d["metadata"]["name"] == "ticket-in")
    ticket_in["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    extra = (
        policy_grants(docs, pod_templates(docs))
        - derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES).grants
    )
    assert {str(g) for g in extra} == {
        "ticket <- ip:0.0.0.0/0 3002/TCP",
        "ticket <- ip:0.0.0.0/0 9464/TCP",
    }


def test_monitoring_reaching_an_api_port_is_reported(fake_table):
    """Issue 16: the monitoring namespace reached every backend port; now only metrics."""
    docs = _fake_docs()
    scrape = next(d for d in docs if d["metadata"]["name"] == "scrape")
    scrape["spec"]["ingress"][0]["ports"] = [{"port": "http"}]
    derivation = derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES)
    granted = policy_grants(docs, pod_templates(docs))
    monitoring = 'ns:{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}/{}'
    assert {str(g) for g in granted - derivation.grants} == {
        f"gateway <- {monitoring} 3001/TCP",
        f"ticket <- {monitoring} 3002/TCP",
    }


def test_metrics_on_loopback_or_on_another_port_are_problems(fake_table):
    docs = _fake_docs()
    env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if not e["name"].startswith("URR_METRICS__")]
    problems = derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES).problems
    assert "gateway: container port 'metrics' is not 4001 (URR_METRICS__PORT)" in problems
    assert any("metrics listen on 127.0.0.1 only" in p for p in problems)


def test_a_local_default_left_in_place_is_a_problem(fake_table):
    docs = _fake_docs()
    env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    env[:] = [e for e in env if e["name"] != "URR_UPSTREAM__URL"]
    derivation = derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES)
    assert any("upstream.url points at 127.0.0.1:9000" in p for p in derivation.problems)


def test_unknown_hosts_and_wrong_service_ports_are_problems(fake_table):
    docs = _fake_docs()
    env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    for item in env:
        if item["name"] == "URR_UPSTREAM__URL":
            item["value"] = "http://ticket:9999"
        if item["name"] == "URR_REDIS__URL":
            item["value"] = "rediss://elsewhere:6379"
    problems = derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES).problems
    assert any("Service ticket has no port 9999" in p for p in problems)
    assert any("host 'elsewhere' is neither a Service" in p for p in problems)


def test_another_namespace_is_not_our_service(fake_table):
    docs = _fake_docs()
    for item in docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]:
        if item["name"] == "URR_UPSTREAM__URL":
            item["value"] = "http://ticket.other.svc:3002"
    problems = derive(docs, FAKE_NETWORK, namespace="urr", extra_classes=FAKE_CLASSES).problems
    assert any("'ticket.other.svc'" in p for p in problems)


def test_a_partial_http_override_keeps_the_port_and_a_wrong_one_is_caught():
    # urr_common layers URR_HTTP__* over the service's own block defaults, so setting only
    # the host keeps the port; a port that disagrees with the table is still reported.
    gateway = workload("gateway")
    kept = settings_from_env(FakeSettings, {"URR_HTTP__HOST": "0.0.0.0"})
    assert listener_problems(gateway, [kept]) == []
    moved = settings_from_env(FakeSettings, {"URR_HTTP__HOST": "0.0.0.0", "URR_HTTP__PORT": "8080"})
    assert listener_problems(gateway, [moved]) == [
        "gateway: settings listen on port 8080, table says 3001"
    ]
    loopback = settings_from_env(FakeSettings, {})
    assert "listens on 127.0.0.1 only" in listener_problems(gateway, [loopback])[0]


def test_endpoints_walk_nested_blocks_secrets_lists_and_aws_defaults():
    settings = settings_from_env(
        FakeSettings,
        {
            "URR_POSTGRES__DSN": "postgresql://u:pw@db.internal/urr",
            "URR_TRUST__JWKS_URL": "https://auth.example/.well-known/jwks.json",
            "URR_AWS__ENDPOINT_URL": "http://moto:5000",
        },
    )
    found = {(e.host, e.port, e.field) for e in endpoints(settings)}
    assert found == {
        ("127.0.0.1", 9000, "upstream.url"),
        ("127.0.0.1", 6379, "redis.url"),
        ("db.internal", 5432, "postgres.dsn"),
        ("127.0.0.1", 9092, "kafka.bootstrap_servers"),
        ("moto", 5000, "aws.endpoint_url"),
        ("auth.example", 443, "trust.jwks_url"),
    }
    without_endpoint = endpoints(settings_from_env(FakeSettings, {}))
    assert Endpoint(AWS_API_HOST, 443, "aws.endpoint_url") in without_endpoint


def test_a_field_marked_as_no_call_is_not_an_endpoint():
    class Compared(BaseModel):
        origins: list[str] = Field(
            default=["https://site.example"], json_schema_extra={"calls": False}
        )
        upstream: str = "http://api.example:8080"

    assert [(e.host, e.port) for e in endpoints(Compared())] == [("api.example", 8080)]


def test_parse_address_forms():
    assert parse_address("s3://bucket/key.json", "f") == [Endpoint(AWS_API_HOST, 443, "f")]
    assert parse_address("unix:///run/redis.sock") == []
    assert parse_address(".urr/keys/vwr/public/*.pem") == []
    assert parse_address("urr-auth") == []
    assert parse_address("a:1,b:2") == [Endpoint("a", 1, ""), Endpoint("b", 2, "")]
    assert parse_address(str(SecretStr("x"))) == []


def test_settings_environment_is_exactly_the_given_variables(monkeypatch):
    monkeypatch.setenv("URR_REDIS__URL", "redis://from-the-shell:6379")
    built = settings_from_env(FakeSettings, {})
    assert isinstance(built, FakeSettings)
    assert built.redis.url == "redis://127.0.0.1:6379/0"
    import os

    assert os.environ["URR_REDIS__URL"] == "redis://from-the-shell:6379"


def test_settings_classes_are_imported_and_only_missing_modules_use_extra_classes():
    assert import_settings_class("urr_common.settings:ServiceSettings") is ServiceSettings
    with pytest.raises(SettingsImportError, match="not installed"):
        import_settings_class(FAKE_PATH)
    with pytest.raises(SettingsImportError, match="no settings class"):
        import_settings_class("urr_common.settings:NoSuchThing")
    assert import_settings_class(FAKE_PATH, {FAKE_PATH: FakeSettings}) is FakeSettings


@pytest.mark.parametrize("entry", WORKLOADS, ids=lambda entry: entry.name)
def test_every_settings_class_of_the_table_is_the_real_one(entry):
    # No stand-ins: every service is merged, so each class must import from its own package
    # and build with the table's port (and nothing else set).
    for path in entry.settings:
        cls = import_settings_class(path)
        module, _, name = path.partition(":")
        assert (cls.__module__, cls.__name__) == (module, name)
    built = workload_settings(entry, {"URR_HTTP__PORT": str(entry.port)})
    assert len(built) == len(entry.settings)
    assert listener_problems(entry, built) == [
        f"{entry.name}: listens on 127.0.0.1 only (set URR_HTTP__HOST=0.0.0.0)"
    ]
    # The table's port is the code's default, except where every deployment moves it.
    default_port = workload_settings(entry, {})[0].http.port  # type: ignore[attr-defined]
    assert default_port == entry.port


def test_real_settings_class_wins_over_an_extra_class():
    path = "urr_common.settings:ServiceSettings"
    assert import_settings_class(path, {path: FakeSettings}) is ServiceSettings
