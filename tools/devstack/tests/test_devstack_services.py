"""The service table, port resolution, env templates and the Procfile honcho runs (pure)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from honcho.environ import parse, parse_procfile

from urr_devstack.keys import ensure_signing_keys
from urr_devstack.services import (
    SERVICES,
    PlannedService,
    ServiceSpec,
    ServiceTableError,
    is_runnable,
    plan_services,
    render_env,
    render_env_file,
    render_procfile,
    resolve_ports,
    template_context,
)

TABLE = (
    ServiceSpec("auth", "fake_auth", 3005),
    ServiceSpec("gateway", "fake_gateway", 3001, env={"URR_UPSTREAMS__AUTH": "{auth_url}"}),
    ServiceSpec("poller", "fake_poller", health_path=None, env={"Q": "{ticket_queue_url}"}),
)
INFRA = {"ticket_queue_url": "http://127.0.0.1:5000/123/ticket-events.fifo"}


def test_devstack_table_matches_the_design_ports() -> None:
    ports = resolve_ports(SERVICES, {})
    assert ports["gateway"] == 3001
    assert ports["gateway-internal"] == 3011
    assert ports["ticket"] == 3002
    assert ports["auth"] == 3005
    assert ports["queue"] == 3007
    assert ports["vwr-apigw"] == 3010
    assert ports["vwr-edge"] == 8000
    # Every process of the stack has a health listener, each on its own port.
    assert all(port is not None for port in ports.values())
    assert len(set(ports.values())) == len(ports)


def test_devstack_table_is_consistent_and_its_templates_resolve() -> None:
    ports = resolve_ports(SERVICES, {}, reserved={"redis": 6379, "moto": 5000})
    infra = {
        **INFRA,
        "ticket_dlq_url": "x",
        "kafka_bootstrap": "127.0.0.1:9092",
        "counters_table": "counters",
        "positions_table": "positions",
        "state_dir": "/s",
    }
    context = template_context("127.0.0.1", ports, infra)
    for spec in SERVICES:
        render_env(spec, context)
        assert spec.name.replace("-", "").isalnum()


def test_devstack_ports_take_overrides_and_refuse_clashes() -> None:
    ports = resolve_ports(TABLE, {"auth": 4005})
    assert ports == {"auth": 4005, "gateway": 3001, "poller": None}
    with pytest.raises(ServiceTableError, match="unknown services"):
        resolve_ports(TABLE, {"autth": 4005})
    with pytest.raises(ServiceTableError, match="both use port 3001"):
        resolve_ports(TABLE, {"auth": 3001})
    with pytest.raises(ServiceTableError, match="the redis server both use port 6379"):
        resolve_ports(TABLE, {"gateway": 6379}, reserved={"redis": 6379})
    with pytest.raises(ServiceTableError, match="no HTTP listener"):
        resolve_ports(TABLE, {"poller": 4000})


def test_devstack_extra_listeners_move_like_services() -> None:
    table = (ServiceSpec("gateway", "g", 3001, extra_ports={"internal": 3011}),)
    assert resolve_ports(table, {}) == {"gateway": 3001, "gateway-internal": 3011}
    # Environment variable names cannot hold "-": GATEWAY_INTERNAL names gateway-internal.
    moved = resolve_ports(table, {"GATEWAY_INTERNAL": 4011})
    assert moved == {"gateway": 3001, "gateway-internal": 4011}
    context = template_context("127.0.0.1", moved, {})
    assert context["gateway_internal_port"] == "4011"
    with pytest.raises(ServiceTableError, match="both use port 3001"):
        resolve_ports(table, {"gateway-internal": 3001})


def test_devstack_plan_starts_only_installed_services_with_their_env() -> None:
    ports = resolve_ports(TABLE, {"gateway": 4001})
    planned, absent = plan_services(
        TABLE,
        host="127.0.0.1",
        ports=ports,
        infra=INFRA,
        runnable=lambda module: module != "fake_auth",
    )
    assert [spec.name for spec in absent] == ["auth"]
    gateway, poller = planned
    assert gateway.port == 4001
    assert gateway.health_url == "http://127.0.0.1:4001/health/ready"
    # A template names another service's URL even when that service is not installed.
    assert gateway.env["URR_UPSTREAMS__AUTH"] == "http://127.0.0.1:3005"
    assert gateway.env["URR_HTTP__PORT"] == "4001"
    assert poller.health_url is None
    assert "URR_HTTP__PORT" not in poller.env
    assert poller.env["Q"] == INFRA["ticket_queue_url"]


def test_devstack_plan_skips_services_and_refuses_unknown_names() -> None:
    ports = resolve_ports(TABLE, {})
    planned, _ = plan_services(
        TABLE, host="127.0.0.1", ports=ports, infra=INFRA, skip=["gateway"], runnable=bool
    )
    assert [service.name for service in planned] == ["auth", "poller"]
    with pytest.raises(ServiceTableError, match="unknown services"):
        plan_services(TABLE, host="h", ports=ports, infra=INFRA, skip=["nope"], runnable=bool)


def test_devstack_unknown_template_name_is_a_clear_error() -> None:
    spec = ServiceSpec("edge", "fake_edge", 8000, env={"ORIGIN": "{gatway_url}"})
    with pytest.raises(ServiceTableError, match=r"'edge': ORIGIN uses \['gatway_url'\]"):
        render_env(spec, {"gateway_url": "http://127.0.0.1:3001"})


def test_devstack_procfile_round_trips_through_honcho() -> None:
    service = PlannedService(
        "gateway",
        "urr_gateway",
        3001,
        "http://127.0.0.1:3001/health/ready",
        {"URR_HTTP__PORT": "3001", "ODD": "it's got spaces & $igns"},
    )
    python = "/opt/my venv/bin/python"
    text = render_procfile([service], python)
    processes = parse_procfile(text).processes
    assert list(processes) == ["gateway"]
    command = processes["gateway"]
    argv = shlex.split(command)
    assert argv[:2] == ["exec", "env"]
    assert "ODD=it's got spaces & $igns" in argv
    assert argv[-3:] == [python, "-m", "urr_gateway"]


def test_devstack_env_file_round_trips_through_honcho() -> None:
    env = {
        "URR_VWR_TRUST__PUBLIC_KEY_FILES": '["/x/.urr/keys/vwr/public/local-1.pem"]',
        "URR_POSTGRES__DSN": "postgresql://postgres@127.0.0.1:5432/urr",
        "WITH_SPACE": "a b",
    }
    assert parse(render_env_file(env)) == env


def test_devstack_runnable_means_python_dash_m_would_run_it() -> None:
    assert is_runnable("json.tool")  # a plain module
    assert is_runnable("urr_devstack")  # a package with __main__
    assert not is_runnable("urr_common")  # a package without __main__
    assert not is_runnable("urr_no_such_package.local.edge")
    assert not is_runnable("")


def test_setup_tasks_are_planned_with_their_environment_filled() -> None:
    from urr_devstack.services import SETUP_TASKS, plan_setup_tasks

    tasks = plan_setup_tasks(
        SETUP_TASKS,
        host="127.0.0.1",
        ports={"queue": 4007, "queue-internal": 6007},
        infra={},
        python="/py",
        runnable=lambda module: module == "urr_ticket",
    )
    assert [(t.name, t.argv) for t in tasks] == [("seed-demo", ("/py", "-m", "urr_ticket", "seed"))]
    # The seed configures the demo event on the queue's internal listener.
    assert tasks[0].env == {"URR_QUEUE_ADMIN__BASE_URL": "http://127.0.0.1:6007"}
    assert plan_setup_tasks(SETUP_TASKS, host="h", ports={}, infra={}, python="p",
                            runnable=lambda module: False) == []  # fmt: skip


def test_the_demo_buyers_are_seeded_at_every_start() -> None:
    from urr_devstack.services import SETUP_TASKS, plan_setup_tasks

    ports = {"queue": 4007, "queue-internal": 6007}
    tasks = plan_setup_tasks(SETUP_TASKS, host="127.0.0.1", ports=ports, infra={}, python="/py")
    assert ("seed-demo-accounts", ("/py", "-m", "urr_auth", "seed-demo-accounts")) in [
        (t.name, t.argv) for t in tasks
    ]


def test_devstack_runs_the_log_the_ratelimit_admin_and_the_exporter() -> None:
    ports = resolve_ports(SERVICES, {})
    assert ports["admission-log"] == 3030
    assert ports["ratelimit-admin"] == 3040
    assert ports["ratelimit-usage"] == 3041
    assert ports["ticket-exporter"] == 3025
    modules = {spec.name: spec.module for spec in SERVICES}
    assert modules["admission-log"] == "urr_admission_log"
    assert modules["ratelimit-admin"] == "urr_ratelimit_admin"
    assert modules["ratelimit-usage"] == "urr_ratelimit_admin.snapshots"
    assert modules["ticket-exporter"] == "urr_ticket_worker.exporter"
    runs = ("urr_admission_log", "urr_ratelimit_admin", "urr_ratelimit_admin.snapshots")
    for module in (*runs, "urr_ticket_worker.exporter"):
        assert is_runnable(module), module
    # The gateway sends /v1/log and /api/v1/admin/ratelimit to them.
    gateway = next(spec for spec in SERVICES if spec.name == "gateway")
    env = render_env(gateway, template_context("127.0.0.1", ports, {"state_dir": "/s"}))
    assert env["URR_UPSTREAMS__ADMISSION_LOG"] == "http://127.0.0.1:3030"
    assert env["URR_UPSTREAMS__RATELIMIT_ADMIN"] == "http://127.0.0.1:3040"


def test_devstack_admission_log_signs_with_the_stack_log_key(tmp_path: Path) -> None:
    log = next(spec for spec in SERVICES if spec.name == "admission-log")
    context = template_context(
        "127.0.0.1", resolve_ports(SERVICES, {}), {"state_dir": str(tmp_path)}
    )
    env = render_env(log, context)
    key = ensure_signing_keys(tmp_path / "keys")["log"]
    # The key the devstack makes (with its public half for verifiers) is the one the log uses.
    assert Path(env["URR_TREE_HEADS__PRIVATE_KEY_FILE"]) == key.private_file
    assert env["URR_TREE_HEADS__KEY_ID"] == key.key_id


def test_devstack_gateway_alone_holds_the_identity_key_and_upstreams_trust_it(
    tmp_path: Path,
) -> None:
    context = template_context(
        "127.0.0.1", resolve_ports(SERVICES, {}), {**FULL_INFRA, "state_dir": str(tmp_path)}
    )
    key = ensure_signing_keys(tmp_path / "keys")["identity"]
    for spec in SERVICES:
        env = render_env(spec, context)
        if spec.name == "gateway":
            assert Path(env["URR_IDENTITY__PRIVATE_KEY_FILE"]) == key.private_file
            assert env["URR_IDENTITY__KEY_ID"] == key.key_id
        else:
            assert not any("PRIVATE_KEY_FILE" in name and "IDENTITY" in name for name in env)


def test_devstack_queue_serves_internal_routes_on_its_own_port_for_the_ticket_processes() -> None:
    ports = resolve_ports(SERVICES, {"queue_internal": 6107})
    assert ports["queue-internal"] == 6107
    context = template_context("127.0.0.1", ports, FULL_INFRA)
    by_name = {spec.name: render_env(spec, context) for spec in SERVICES}
    assert by_name["queue"]["URR_INTERNAL__PORT"] == "6107"
    for name in ("ticket", "ticket-outcomes"):
        assert by_name[name]["URR_QUEUE_ADMIN__BASE_URL"] == "http://127.0.0.1:6107"
        assert by_name[name]["URR_QUEUE_COMPLETION__BASE_URL"] == "http://127.0.0.1:6107"


#: Every infrastructure value a service template may name.
FULL_INFRA = {
    name: f"<{name}>"
    for name in (
        "state_dir",
        "redis_url",
        "postgres_dsn",
        "kafka_bootstrap",
        "aws_endpoint_url",
        "ticket_queue_url",
        "ticket_dlq_url",
        "counters_table",
        "positions_table",
    )
}


def test_devstack_queue_batches_its_kafka_records_for_the_local_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tansu's memory storage lists every batch of a partition on each fetch with new data:
    the local queue lingers longer than the default (docs/performance.md, issue 22)."""
    from urr_common.settings import KafkaSettings, load_settings
    from urr_queue.settings import QueueSettings

    ports = resolve_ports(SERVICES, {})
    env = render_env(
        next(spec for spec in SERVICES if spec.name == "queue"),
        template_context("127.0.0.1", ports, FULL_INFRA),
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings(QueueSettings)
    assert settings.kafka.linger_ms >= 100 > KafkaSettings().linger_ms
