"""Alerts, analysis queries and the dashboard use only catalogued metrics and labels; every
alert has its runbook section; the dashboard covers what operators watch."""

from __future__ import annotations

import ast
import base64
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from urr_common.metrics import HttpMetrics
from urr_deploycheck import ratelimit_dashboard
from urr_deploycheck.dashboard import build
from urr_deploycheck.manifests import Manifest, by_kind, render
from urr_deploycheck.metrics import (
    METRICS,
    TARGET_LABELS,
    by_series_name,
    markdown_table,
)

REPO = Path(__file__).resolve().parents[3]
RUNBOOK = REPO / "docs/runbook.md"


@cache
def prod() -> tuple[Manifest, ...]:
    return tuple(render(REPO / "k8s/overlays/prod"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alert of every PrometheusRule (the suite's, and groups kept in files of their own)."""
    rules = by_kind(prod(), "PrometheusRule").values()
    return [r for rule in rules for group in rule["spec"]["groups"] for r in group["rules"]]


def every_query() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert, analysis metric and dashboard panel."""
    queries = [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    for template in by_kind(prod(), "AnalysisTemplate").values():
        for metric in template["spec"]["metrics"]:
            where = f"analysis {template['metadata']['name']}/{metric['name']}"
            queries.append((where, metric["provider"]["prometheus"]["query"]))
    for panel in [*build()["panels"], *ratelimit_dashboard.build()["panels"]]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']}", target["expr"]))
    return queries


def test_http_metrics_match_what_urr_common_registers():
    registry = CollectorRegistry()
    metrics = HttpMetrics.register(registry)
    # Labelled metrics have no samples until a child exists.
    metrics.requests.labels("GET", "/x", "2xx").inc()
    metrics.latency.labels("GET", "/x").observe(0.01)
    exported: dict[str, tuple[str, ...]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = tuple(k for k in sample.labels if k != "le")
            exported.setdefault(sample.name, labels)
    for metric in METRICS:
        if metric.status != "exported" or metric.owner != "common":
            continue
        for series in metric.series_names():
            if series.endswith(("_sum", "_count")) and series not in exported:
                continue
            assert series in exported, f"{series} is not exported by urr_common"
            assert set(exported[series]) == set(metric.labels), series


_KINDS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram"}


def _owner_folder(owner: str) -> Path:
    return REPO / ("libs/common" if owner == "common" else f"services/{owner}") / "src"


def _exposition_name(kind: str, name: str) -> str:
    # prometheus_client adds _total to a counter's name (and keeps one already there).
    if kind == "counter":
        return name.removesuffix("_total") + "_total"
    return name


def metrics_in_source(folder: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every ``Counter``/``Gauge``/``Histogram(name, help, [labels])`` created in ``folder``:
    exposition name -> (kind, labels). Read from the code, so a renamed metric shows here."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            kind = _KINDS.get(node.func.id)
            if kind is None or not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            labels_node = node.args[2] if len(node.args) > 2 else None
            for keyword in node.keywords:
                if keyword.arg == "labelnames":
                    labels_node = keyword.value
            labels: tuple[str, ...] = ()
            if isinstance(labels_node, ast.List | ast.Tuple):
                labels = tuple(str(ast.literal_eval(item)) for item in labels_node.elts)
            found[_exposition_name(kind, str(node.args[0].value))] = (kind, labels)
    return found


@pytest.mark.parametrize(
    "metric", [m for m in METRICS if m.status == "exported"], ids=lambda metric: metric.name
)
def test_exported_metrics_are_created_by_their_owner_with_these_labels(metric):
    in_source = metrics_in_source(_owner_folder(metric.owner))
    assert metric.name in in_source, f"{metric.owner} creates no metric {metric.name}"
    assert in_source[metric.name] == (metric.kind, metric.labels)


def test_every_catalogued_metric_is_exported_none_merely_proposed():
    # The "proposed" escape is gone: an alert or panel may only read what a process serves.
    assert {m.status for m in METRICS} == {"exported", "builtin"}
    assert [m.name for m in METRICS if m.status == "builtin"] == ["up"]


def test_the_source_scan_reads_names_kinds_and_labels():
    found = metrics_in_source(REPO / "libs/common/src")
    assert found["urr_http_requests_total"] == ("counter", ("method", "route", "status"))
    assert found["urr_http_request_duration_seconds"] == ("histogram", ("method", "route"))
    assert found["urr_http_requests_in_flight"] == ("gauge", ())


def test_catalogue_has_unique_names_and_urr_prefixes():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for metric in METRICS:
        assert metric.name == "up" or metric.name.startswith("urr_")
        if metric.kind == "counter":
            assert metric.name.endswith("_total"), metric.name
        if metric.status != "builtin":
            assert _owner_folder(metric.owner).is_dir(), metric.owner


def _parse(query: str) -> Any:
    """The query's AST (Grafana's ``$__rate_interval`` is not a PromQL duration)."""
    return promql_parser.parse(query.replace("$__rate_interval", "5m"))


def _walk(query: str) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(selector name, its label matchers) and every label named by by/without/on/ignoring."""
    selectors: list[tuple[str, list[str]]] = []
    grouping: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append((node.name or "", [m.name for m in node.matchers.matchers]))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            grouping.extend(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            grouping.extend(matching.labels if matching is not None else ())

    promql_parser.walk(_parse(query), visit)
    return selectors, grouping


@pytest.mark.parametrize(("where", "query"), every_query(), ids=lambda v: str(v)[:60])
def test_queries_parse_and_use_only_catalogued_metrics_and_labels(where, query):
    known = by_series_name()
    selectors, grouping = _walk(query)
    assert selectors, f"{where}: selects nothing"
    used = []
    for name, labels in selectors:
        assert name in known, f"{where}: {name} is not in metrics.py"
        metric = known[name]
        used.append(metric)
        for label in labels:
            assert label in set(metric.labels) | TARGET_LABELS, f"{where}: {name} has no {label}"
    allowed = {label for m in used for label in m.labels} | TARGET_LABELS | {"le"}
    for label in grouping:
        assert label in allowed, f"{where}: groups by unknown label {label}"


def test_the_query_check_rejects_what_it_should():
    with pytest.raises(ValueError, match="parenthesis"):
        _parse("sum(rate(urr_http_requests_total[5m])")
    selectors, grouping = _walk(
        'sum by (app) (rate(urr_http_requests_total{status="5xx"}[$__rate_interval])) '
        "/ on (app) sum by (app) (rate(urr_nope_total[5m]))"
    )
    assert selectors == [("urr_http_requests_total", ["status"]), ("urr_nope_total", [])]
    assert grouping == ["app", "app", "app"]


REQUIRED_ALERTS = {
    "UrrServiceUnavailable": "up",
    "UrrHigh5xxRatio": "urr_http_requests_total",
    "UrrHighLatencyP95": "urr_http_request_duration_seconds_bucket",
    "UrrRateLimitFailOpen": "urr_ratelimit_decisions_total",
    "UrrQueueStuck": "urr_queue_admitted_total",
    "UrrDlqNotEmpty": "urr_worker_dlq_messages",
    "UrrOutboxBacklog": "urr_outbox_unsent",
    "UrrKafkaConsumerLag": "urr_kafka_consumer_lag",
}


def _anchors(markdown: str) -> set[str]:
    headings = re.findall(r"^#{2,4} (.+)$", markdown, flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-") for h in headings}


def test_the_issue_s_alerts_exist_with_severity_and_runbook_section():
    rules = {r["alert"]: r for r in alert_rules()}
    for alert, metric in REQUIRED_ALERTS.items():
        assert alert in rules
        assert metric in rules[alert]["expr"]
    anchors = _anchors(RUNBOOK.read_text(encoding="utf-8"))
    for alert, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("docs/runbook.md#" + alert.lower())
        assert alert.lower() in anchors, f"docs/runbook.md has no section for {alert}"
        assert rule["annotations"]["summary"]


ADMISSION_LOG_ALERTS = {
    # The queue admits, the log appends nothing (or its consumer fails): critical, since the
    # records wait only for queue-events' retention.
    "UrrAdmissionLogStalled": (
        "critical",
        [
            "urr_queue_admitted_total",
            'urr_admission_log_records_total{outcome="appended"}',
            'urr_admission_log_failures_total{loop="consumer"}',
        ],
    ),
    "UrrAdmissionLogHeadStale": (
        "warning",
        [
            "max(urr_admission_log_last_append_timestamp_seconds)",
            "- max(urr_admission_log_last_head_timestamp_seconds)",
            'urr_admission_log_failures_total{loop="signer"}',
        ],
    ),
}


def test_the_admission_log_alerts_read_its_series_and_the_runbook_has_its_procedure():
    rules = {r["alert"]: r for r in alert_rules()}
    for alert, (severity, needles) in ADMISSION_LOG_ALERTS.items():
        assert rules[alert]["labels"]["severity"] == severity
        for needle in needles:
            assert needle in rules[alert]["expr"], (alert, needle)
    anchors = _anchors(RUNBOOK.read_text(encoding="utf-8"))
    assert "the-admission-log-stops-growing--a-tree-head-fails-to-verify" in anchors


def test_no_alert_or_panel_says_it_cannot_fire():
    for rule in alert_rules():
        assert "proposed_metrics" not in rule["annotations"], rule["alert"]
    for panel in build()["panels"]:
        assert "proposed" not in panel["title"] + panel.get("description", ""), panel["title"]


def test_runbook_covers_the_procedures_and_its_links_resolve():
    text = RUNBOOK.read_text(encoding="utf-8")
    anchors = _anchors(text)
    for section in (
        "rollback",
        "redis-outage",
        "kafka-outage",
        "draining-the-dlq",
        "a-stuck-queue",
        "resetting-an-event",
    ):
        assert section in anchors
    for link in re.findall(r"\]\(#([a-z0-9-]+)\)", text):
        assert link in anchors, f"broken link #{link}"


def test_dashboard_file_is_valid_json_with_unique_panels_on_the_grid():
    dashboard = json.loads((REPO / "monitoring/grafana/urr.json").read_text(encoding="utf-8"))
    assert dashboard == build()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "app", "event"} <= variables


def test_dashboard_shows_what_the_issue_lists():
    expressions = " ".join(q for where, q in every_query() if where.startswith("panel"))
    for needle in (
        "urr_http_requests_total",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
        'urr_ratelimit_decisions_total{source="open"}',
        "sum by (category, result)",
        "urr_queue_waiting",
        "urr_queue_active_sessions",
        "urr_queue_eta_seconds",
        "urr_queue_admission_rate",
        "urr_queue_oldest_waiter_seconds",
        "urr_vwr_serving_counter",
        "urr_vwr_next_position",
        "urr_worker_batches_total",
        "urr_worker_dlq_messages",
        "urr_worker_dlq_oldest_age_seconds",
        "urr_worker_messages_total",
        "urr_worker_batch_seconds_bucket",
        "urr_kafka_consumer_lag",
        "urr_outbox_unsent",
    ):
        assert needle in expressions, needle


def test_catalogue_renders_as_a_table():
    table = markdown_table()
    assert table.count("\n") == len(METRICS) + 1
    assert "| `urr_outbox_unsent` | gauge | - | ticket_worker | exported |" in table
    assert "| `urr_worker_dlq_messages` | gauge | - | ticket_worker | exported |" in table
    oldest = "| `urr_worker_queue_oldest_age_seconds` | gauge | - | ticket_worker | exported |"
    assert oldest in table


# The rate-limit usage alerts and the per-tenant dashboard (issue 18) ---------------------------

USAGE_ALERTS = {
    "UrrRateLimitSnapshotLag": "urr_ratelimit_snapshot_lag_seconds",
    "UrrRateLimitQuotaSoftLimit": "urr_ratelimit_quota_soft_limit",
    "UrrRateLimitFailOpenTime": 'urr_ratelimit_decisions_total{source="open"}',
}


def test_the_usage_alerts_are_their_own_group_also_loaded_by_the_compose_prometheus():
    rules = by_kind(prod(), "PrometheusRule")
    usage = rules["urr-ratelimit-usage"]["spec"]["groups"]
    assert [group["name"] for group in usage] == ["urr.ratelimit.usage"]
    alerts = {r["alert"]: r for group in usage for r in group["rules"]}
    assert set(alerts) == set(USAGE_ALERTS)
    for alert, needle in USAGE_ALERTS.items():
        assert needle in alerts[alert]["expr"], alert
    # No other PrometheusRule defines these groups or alerts a second time.
    others = [r for name, rule in rules.items() if name != "urr-ratelimit-usage"
              for group in rule["spec"]["groups"] for r in group["rules"]]  # fmt: skip
    assert not {r["alert"] for r in others} & set(USAGE_ALERTS)
    compose_rules = yaml.safe_load((REPO / "monitoring/rules/ratelimit-usage.yml").read_text())
    assert compose_rules["groups"] == usage
    prometheus = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./monitoring/rules:/etc/prometheus/rules:ro" in mounts


def test_the_usage_alerts_fire_at_their_thresholds():
    alerts = {r["alert"]: r["expr"] for r in alert_rules()}
    assert "> 600" in alerts["UrrRateLimitSnapshotLag"]
    assert "absent(urr_ratelimit_snapshot_lag_seconds)" in alerts["UrrRateLimitSnapshotLag"]
    assert ">= max by (tenant) (urr_ratelimit_quota_soft_limit)" in " ".join(
        alerts["UrrRateLimitQuotaSoftLimit"].split()
    )
    assert "[1h:1m]" in alerts["UrrRateLimitFailOpenTime"]


def test_the_tenant_dashboard_is_generated_valid_and_shows_what_the_issue_lists():
    path = REPO / ratelimit_dashboard.PATH
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    assert dashboard == ratelimit_dashboard.build()
    assert dashboard["uid"] != build()["uid"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))
        if panel["type"] != "row":
            assert panel["targets"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "tenant"}
    expressions = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for needle in (
        "sum by (tenant, result) (rate(urr_ratelimit_usage_requests_total",  # traffic
        'result=~"blocked"',  # block ratio
        "urr_ratelimit_quota_used",
        "urr_ratelimit_quota_soft_limit",
        "urr_ratelimit_snapshot_lag_seconds",
        'urr_ratelimit_decisions_total{source="open"}',
    ):
        assert needle in expressions, needle


def _amtool() -> str:
    path = shutil.which("amtool")
    if path is None:
        pytest.fail("amtool is missing: `make system-deps` installs prometheus-alertmanager")
    return path


@pytest.mark.parametrize("overlay", ["prod", "staging"])
def test_alertmanager_config_is_rendered_and_amtool_accepts_it(overlay, tmp_path):
    docs = render(REPO / "k8s/overlays" / overlay)
    secret = by_kind(docs, "Secret")["urr-alertmanager-config"]
    config = tmp_path / "alertmanager.yaml"
    config.write_bytes(base64.b64decode(secret["data"]["alertmanager.yaml"]))
    checked = subprocess.run(
        [_amtool(), "check-config", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (manager,) = by_kind(docs, "Alertmanager").values()
    assert manager["spec"]["configSecret"] == "urr-alertmanager-config"
    parsed = yaml.safe_load(config.read_text())
    # Receiver secrets are files of the mounted Secret, never values in the configuration.
    mounted = {f"/etc/alertmanager/secrets/{name}/" for name in manager["spec"]["secrets"]}
    text = config.read_text()
    for key in ("smtp_auth_password_file", "slack_api_url_file"):
        assert any(parsed["global"][key].startswith(m) for m in mounted), key
    assert "credentials_file: /etc/alertmanager/secrets/urr-alertmanager-receivers/" in text
    for forbidden in ("smtp_auth_password:", "api_url:", "hooks.slack.com"):
        assert forbidden not in text


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=UrrDlqNotEmpty"], "urr-critical"),
        (["severity=warning", "alertname=UrrPodDown", "app=queue"], "urr-warning"),
        (["alertname=SomethingElse"], "urr-default"),
    ],
)
def test_alerts_are_routed_by_severity(labels, receiver):
    config = REPO / "k8s/components/monitoring/alertmanager.yaml"
    routed = subprocess.run(
        [_amtool(), "config", "routes", "test", f"--config.file={config}", *labels],
        capture_output=True,
        text=True,
        check=False,
    )
    assert routed.stdout.strip() == receiver, routed.stdout + routed.stderr


def test_every_severity_the_rules_use_has_its_own_route():
    config = yaml.safe_load(
        (REPO / "k8s/components/monitoring/alertmanager.yaml").read_text(encoding="utf-8")
    )
    routed = {route["matchers"][0] for route in config["route"]["routes"]}
    for rule in alert_rules():
        assert f'severity="{rule["labels"]["severity"]}"' in routed, rule["alert"]


def test_the_compose_prometheus_loads_every_group_the_cluster_alerts_with():
    cluster = [
        group
        for rule in by_kind(prod(), "PrometheusRule").values()
        for group in rule["spec"]["groups"]
    ]
    compose = [
        group
        for path in sorted((REPO / "monitoring/rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    ]
    by_name = {group["name"]: group for group in compose}
    assert len(by_name) == len(compose), "a group is defined twice under monitoring/rules"
    assert by_name == {group["name"]: group for group in cluster}
