"""Monitoring on the local stack without servers: what Prometheus and Alertmanager are given
is the Kubernetes rules and route tree, and the metric names read out of the dashboards and
alerts are the ones a PromQL parser finds.

The running part (every target scraped, every queried metric served by some process, a dead
letter paging through Prometheus and Alertmanager to a webhook) rides on the one full stack
start of ``test_devstack_up.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from urr_devstack.monitoring import (
    ALERTMANAGER_CONFIG,
    alert_queries,
    alertmanager_config,
    dashboard_queries,
    duration,
    local_rules,
    metric_names,
    rule_groups,
    scrape_targets,
    series_served,
    unserved_metrics,
)
from urr_devstack.settings import DevstackSettings, MonitoringSettings

REPO = Path(__file__).resolve().parents[3]


def _parser_names(expr: str) -> set[str]:
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr.replace("$__rate_interval", "5m")), visit)
    return found


def test_the_lexer_finds_what_the_parser_finds_in_every_real_query() -> None:
    queries = [
        q for q in dashboard_queries(REPO) + alert_queries(REPO) if "label_values" not in q[0]
    ]
    assert len(queries) > 40
    for where, expr in queries:
        assert metric_names(expr) == _parser_names(expr), where


def test_the_lexer_skips_functions_keywords_labels_and_numbers() -> None:
    expr = (
        'sum by (app) (rate(a_total{status="5xx", x=~"b_total|c"}[$__rate_interval])) / on (app) '
        "group_left(le) histogram_quantile(0.95, b_bucket) > bool 1e3 or vector(0) unless absent"
        "(up == 1) and c offset 5m"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "up", "c"}


def test_served_series_include_metrics_without_samples_yet() -> None:
    page = (
        "# HELP a_total x\n# TYPE a_total counter\n"
        '# HELP h x\n# TYPE h histogram\nh_bucket{le="1.0"} 0.0\n'
        '# TYPE g gauge\ng{event_id="e"} 3.0\n'
    )
    assert series_served(page) == {"a_total", "h_bucket", "h_sum", "h_count", "g"}


def test_unserved_names_are_reported_with_where_they_are_used() -> None:
    every = {name for _, expr in dashboard_queries(REPO) + alert_queries(REPO)
             for name in metric_names(expr)}  # fmt: skip
    page = "".join(f"# TYPE {name} gauge\n" for name in sorted(every - {"urr_queue_waiting"}))
    missing = unserved_metrics(REPO, [page])
    assert missing
    assert {name for _, name in missing} == {"urr_queue_waiting"}
    assert any(where.endswith("variable event") for where, _ in missing)
    assert unserved_metrics(REPO, [page, 'urr_queue_waiting{event_id="e"} 1\n']) == []


# -- rendering (no servers) ----------------------------------------------------------------


def test_local_rules_are_the_kubernetes_groups_with_only_for_replaced(tmp_path: Path) -> None:
    groups = rule_groups(REPO)
    rendered = local_rules(groups, "0s")["groups"]
    assert [g["name"] for g in rendered] == [g["name"] for g in groups]
    for original, local in zip(groups, rendered, strict=True):
        for before, after in zip(original["rules"], local["rules"], strict=True):
            assert after["for"] == "0s"
            assert {k: v for k, v in after.items() if k != "for"} == {
                k: v for k, v in before.items() if k != "for"
            }
    kept = local_rules(groups, None)["groups"]
    assert kept == [dict(g) for g in groups]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(local_rules(groups, "0s")))
    checked = subprocess.run(
        [_tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_local_alertmanager_keeps_the_route_tree_and_posts_every_receiver_to_the_webhook(
    tmp_path: Path,
) -> None:
    k8s = yaml.safe_load((REPO / ALERTMANAGER_CONFIG).read_text(encoding="utf-8"))
    settings = MonitoringSettings(webhook_url="http://127.0.0.1:9/hook", group_wait_s=0.5)
    local = alertmanager_config(k8s, settings)
    assert [r["name"] for r in local["receivers"]] == [r["name"] for r in k8s["receivers"]]
    for receiver in local["receivers"]:
        assert receiver["webhook_configs"] == [
            {"url": "http://127.0.0.1:9/hook", "send_resolved": True}
        ]
    assert local["route"]["group_wait"] == "500ms"
    assert [r["matchers"] for r in local["route"]["routes"]] == [
        r["matchers"] for r in k8s["route"]["routes"]
    ]
    assert local["inhibit_rules"] == k8s["inhibit_rules"]
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(local))
    for labels, receiver in ((["severity=critical"], "urr-critical"), ([], "urr-default")):
        routed = subprocess.run(
            [_tool("amtool"), "config", "routes", "test", f"--config.file={config}", *labels],
            capture_output=True,
            text=True,
        )
        assert routed.stdout.strip() == receiver, routed.stderr
    nowhere = alertmanager_config(k8s, MonitoringSettings())
    assert all(set(r) == {"name"} for r in nowhere["receivers"])


def test_targets_are_the_metrics_listeners_and_settings_refuse_nonsense() -> None:
    assert scrape_targets("127.0.0.1", {"queue": 3007, "worker": None}) == {
        "queue": "127.0.0.1:4007"
    }
    assert (duration(0.5), duration(5), duration(0.0001)) == ("500ms", "5000ms", "1ms")
    refused = (
        ({"rule_for": "soon"}, "no Prometheus duration"),
        ({"webhook_url": "file:///x"}, "http"),
        ({"alertmanager_port": 9090}, "must differ"),
    )
    for bad, why in refused:
        with pytest.raises(ValueError, match=why):
            MonitoringSettings(**bad)
    with pytest.raises(ValueError, match="both use port"):
        DevstackSettings(
            monitoring=MonitoringSettings(enabled=True, prometheus_port=6379),
        )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: `make system-deps` installs Debian's prometheus packages")
    return path


@given(st.text(max_size=200))
def test_the_lexer_never_raises_and_names_only_identifiers(text: str) -> None:
    for name in metric_names(text):
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name)
        assert name.lower() not in {"by", "and", "or", "unless", "without", "on", "bool"}
