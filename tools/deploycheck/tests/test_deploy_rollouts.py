"""Argo Rollouts and AnalysisTemplates hold together (no schema exists for them offline).

Checked on the rendered prod overlay: the Deployment, Services and templates a Rollout names
exist; selectors select the pods they should; ports and probes line up; the analysis gates are
the canary gates of seeds 000/001 (error rate < 1 %, p95 < 300 ms).
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


@cache
def prod() -> tuple[Manifest, ...]:
    return tuple(render(K8S / "overlays" / "prod"))


def _pod_of(rollout: Manifest, docs: tuple[Manifest, ...]) -> PodTemplate:
    ref = rollout["spec"]["workloadRef"]
    assert (ref["apiVersion"], ref["kind"]) == ("apps/v1", "Deployment")
    pods = {p.name: p for p in pod_templates(docs) if p.kind == "Deployment"}
    assert ref["name"] in pods, f"workloadRef names a missing Deployment {ref['name']}"
    return pods[ref["name"]]


def test_rollouts_are_exactly_the_blue_green_services_of_the_table():
    rollouts = by_kind(prod(), "Rollout")
    assert sorted(rollouts) == ROLLOUT_SERVICES == ["gateway", "queue", "ticket"]
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


@pytest.mark.parametrize("name", ROLLOUT_SERVICES)
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
