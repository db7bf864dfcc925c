"""Argo Rollouts and AnalysisTemplates hold together (no schema exists for them offline).

Checked on the rendered prod overlay: the Deployment, Services and templates a Rollout names
exist; selectors select the pods they should; ports and probes line up; the analysis gates are
the canary gates of seeds 000/001 (error rate < 1 %, p95 < 300 ms). The admission log's canary
adds gates of its own, on the series the log exports.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from urr_deploycheck.manifests import (
    Manifest,
    PodTemplate,
    by_kind,
    label_selector_matches,
    pod_templates,
    render,
    service_selector_matches,
)
from urr_deploycheck.services import WORKLOADS

K8S = Path(__file__).resolve().parents[3] / "k8s"
ROLLOUT_SERVICES = sorted(w.name for w in WORKLOADS if w.rollout)
CANARY_SERVICES = sorted(w.name for w in WORKLOADS if w.canary)


@cache
def prod() -> tuple[Manifest, ...]:
    return tuple(render(K8S / "overlays" / "prod"))


def _pod_of(rollout: Manifest, docs: tuple[Manifest, ...]) -> PodTemplate:
    ref = rollout["spec"]["workloadRef"]
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
    pods = {p.name: p for p in pod_templates(docs) if p.kind == "Deployment"}
    assert ref["name"] in pods, f"workloadRef names a missing Deployment {ref['name']}"
    return pods[ref["name"]]


def test_rollouts_are_exactly_the_blue_green_and_canary_services_of_the_table():
    rollouts = by_kind(prod(), "Rollout")
    assert ROLLOUT_SERVICES == ["gateway", "queue", "ticket"]
    assert CANARY_SERVICES == ["admission-log"]
    assert sorted(rollouts) == sorted(ROLLOUT_SERVICES + CANARY_SERVICES)
    for name in ROLLOUT_SERVICES:
        assert set(rollouts[name]["spec"]["strategy"]) == {"blueGreen"}
    for name in CANARY_SERVICES:
        assert set(rollouts[name]["spec"]["strategy"]) == {"canary"}
    for overlay in ("kind", "staging"):
        docs = render(K8S / "overlays" / overlay)
        assert not by_kind(docs, "Rollout")
        assert not by_kind(docs, "AnalysisTemplate")


@pytest.mark.parametrize("name", ROLLOUT_SERVICES)
def test_rollout_references_resolve(name):
    docs = prod()
    rollout = by_kind(docs, "Rollout")[name]
    spec = rollout["spec"]
    pod = _pod_of(rollout, docs)
    # The Rollout owns the pods; the Deployment only lends its template.
    assert by_kind(docs, "Deployment")[pod.name]["spec"]["replicas"] == 0
    assert spec["replicas"] >= 3
    assert label_selector_matches(spec["selector"], pod.labels)
    assert spec["selector"] == by_kind(docs, "Deployment")[pod.name]["spec"]["selector"]

    strategy = spec["strategy"]["blueGreen"]
    assert strategy["autoPromotionEnabled"] is False
    assert strategy["scaleDownDelaySeconds"] >= 30
    services = by_kind(docs, "Service")
    for role in ("activeService", "previewService"):
        service = services[strategy[role]]
        assert service_selector_matches(service["spec"]["selector"], pod.labels), role
        for port in service["spec"]["ports"]:
            assert pod.resolve_port(port["targetPort"]) is not None, (role, port)
    assert strategy["activeService"] == name
    assert strategy["previewService"] == f"{name}-preview"
    # Both Services expose the same ports: smoke tests hit green where users hit blue.
    active, preview = (
        services[strategy[r]]["spec"]["ports"] for r in ("activeService", "previewService")
    )
    assert active == preview


@pytest.mark.parametrize("name", ROLLOUT_SERVICES + CANARY_SERVICES)
def test_rollout_pods_probe_their_own_ports(name):
    docs = prod()
    pod = _pod_of(by_kind(docs, "Rollout")[name], docs)
    container_ports = set(pod.container_ports().values())
    for container in pod.containers:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container[probe]["httpGet"]["port"]
            assert pod.resolve_port(port) in container_ports, (probe, port)


@pytest.mark.parametrize("name", ROLLOUT_SERVICES)
def test_analysis_runs_reference_templates_with_every_argument(name):
    docs = prod()
    templates = by_kind(docs, "AnalysisTemplate")
    strategy = by_kind(docs, "Rollout")[name]["spec"]["strategy"]["blueGreen"]
    for phase in ("prePromotionAnalysis", "postPromotionAnalysis"):
        analysis = strategy[phase]
        given = {arg["name"]: arg for arg in analysis.get("args", [])}
        assert given["app"]["value"] == name
        assert given["pod-template-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
        for ref in analysis["templates"]:
            template = templates[ref["templateName"]]
            needed = {a["name"] for a in template["spec"].get("args", []) if "value" not in a}
            assert needed <= set(given), (phase, ref["templateName"], needed - set(given))
            used = set(re.findall(r"\{\{args\.([\w-]+)\}\}", str(template["spec"]["metrics"])))
            declared = {a["name"] for a in template["spec"].get("args", [])}
            assert used <= declared
    assert {t["templateName"] for t in strategy["prePromotionAnalysis"]["templates"]} == {
        "urr-health",
        "urr-slo",
    }


def _metric(template: str, name: str) -> dict[str, Any]:
    metrics = by_kind(prod(), "AnalysisTemplate")[template]["spec"]["metrics"]
    return next(m for m in metrics if m["name"] == name)


def test_slo_gates_are_the_canary_thresholds_of_the_playbook():
    error_rate = _metric("urr-slo", "error-rate")
    assert error_rate["successCondition"] == "result[0] < 0.01"
    query = error_rate["provider"]["prometheus"]["query"]
    assert "urr_http_requests_total" in query
    assert 'status="5xx"' in query
    latency = _metric("urr-slo", "latency-p95")
    assert latency["successCondition"] == "result[0] < 0.3"
    assert "histogram_quantile(0.95" in latency["provider"]["prometheus"]["query"]
    health = _metric("urr-health", "pods-up")
    # Seed 004 §8.1: five checks ten seconds apart.
    assert (health["count"], health["interval"]) == (5, "10s")
    for metric in (error_rate, latency, health):
        query = metric["provider"]["prometheus"]["query"]
        assert 'rollouts_pod_template_hash="{{args.pod-template-hash}}"' in query
        assert metric["provider"]["prometheus"]["address"].startswith("http://")


def test_the_pod_monitor_provides_the_labels_the_queries_filter_on():
    (monitor,) = by_kind(prod(), "PodMonitor").values()
    pods = [
        p
        for p in pod_templates(prod())
        if label_selector_matches(monitor["spec"]["selector"], p.labels)
    ]
    assert {p.name for p in pods} >= set(ROLLOUT_SERVICES)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert all(p.resolve_port(endpoint["port"]) for p in pods)
    targets = {r["targetLabel"] for r in endpoint["relabelings"]}
    assert {"app", "rollouts_pod_template_hash"} <= targets


# The admission log's canary (issue 19) -----------------------------------------------------------


def _analysis_args_and_templates(analysis: dict[str, Any], name: str) -> list[str]:
    """Check one analysis block's arguments against its templates; the template names."""
    templates = by_kind(prod(), "AnalysisTemplate")
    given = {arg["name"]: arg for arg in analysis.get("args", [])}
    assert given["app"]["value"] == name
    assert given["pod-template-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
    names = []
    for ref in analysis["templates"]:
        template = templates[ref["templateName"]]
        needed = {a["name"] for a in template["spec"].get("args", []) if "value" not in a}
        assert needed <= set(given), (ref["templateName"], needed - set(given))
        names.append(ref["templateName"])
    return names


@pytest.mark.parametrize("name", CANARY_SERVICES)
def test_the_canary_rollout_resolves_and_gates_on_the_log_s_own_series(name):
    docs = prod()
    rollout = by_kind(docs, "Rollout")[name]
    spec = rollout["spec"]
    pod = _pod_of(rollout, docs)
    assert by_kind(docs, "Deployment")[pod.name]["spec"]["replicas"] == 0
    assert spec["selector"] == by_kind(docs, "Deployment")[pod.name]["spec"]["selector"]
    assert label_selector_matches(spec["selector"], pod.labels)
    canary = spec["strategy"]["canary"]
    # Never fewer pods than asked for: the old pod stays until the new one is promoted.
    assert (canary["maxSurge"], canary["maxUnavailable"]) == (1, 0)
    # No stableService: the public Service keeps selecting old and new pods, so the canary
    # serves real reads; the canary Service holds the new pods alone for smoke tests.
    assert "stableService" not in canary
    services = by_kind(docs, "Service")
    for service_name in (name, canary["canaryService"]):
        service = services[service_name]
        assert service_selector_matches(service["spec"]["selector"], pod.labels), service_name
        for port in service["spec"]["ports"]:
            assert pod.resolve_port(port["targetPort"]) is not None, (service_name, port)
    assert services[name]["spec"]["ports"] == services[canary["canaryService"]]["spec"]["ports"]

    background = canary["analysis"]
    assert _analysis_args_and_templates(background, name) == ["urr-admission-log"]
    assert background["startingStep"] == 1
    steps = canary["steps"]
    assert steps[0] == {"setWeight": 50}
    gated = _analysis_args_and_templates(steps[1]["analysis"], name)
    assert gated == ["urr-health", "urr-slo", "urr-admission-log"]
    # The analysis passes, then a person promotes (as for the blue-green services).
    assert steps[2] == {"pause": {}}
    assert all("setWeight" not in step or step["setWeight"] < 100 for step in steps)


def test_the_log_gates_read_the_new_pods_failures_and_malformed_records():
    failures = _metric("urr-admission-log", "log-failures")
    assert failures["successCondition"] == "result[0] == 0"
    assert "urr_admission_log_failures_total" in failures["provider"]["prometheus"]["query"]
    malformed = _metric("urr-admission-log", "malformed-records")
    assert malformed["successCondition"] == "result[0] < 0.01"
    query = malformed["provider"]["prometheus"]["query"]
    assert 'urr_admission_log_records_total{app="{{args.app}}"' in query
    assert 'outcome="malformed"' in query
    template = by_kind(prod(), "AnalysisTemplate")["urr-admission-log"]["spec"]
    declared = {a["name"] for a in template["args"]}
    for metric in template["metrics"]:
        query = metric["provider"]["prometheus"]["query"]
        assert 'rollouts_pod_template_hash="{{args.pod-template-hash}}"' in query
        assert "or vector(" in query  # no traffic yet: 0, not NaN (a failure to Argo)
        assert set(re.findall(r"\{\{args\.([\w-]+)\}\}", query)) <= declared
