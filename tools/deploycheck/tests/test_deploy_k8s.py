"""The Kubernetes overlays: they render, validate strictly, and run hardened, drainable pods."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from urr_deploycheck.manifests import (
    Manifest,
    PodTemplate,
    by_kind,
    container_env,
    kustomize,
    label_selector_matches,
    pod_templates,
    render,
)
from urr_deploycheck.services import (
    OVERLAYS,
    PUBLIC_WORKLOADS,
    Target,
    workload,
    workloads_for,
)

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s"
NAMESPACES = {"kind": "urr", "staging": "urr-staging", "prod": "urr"}
#: Kinds whose schemas are CRDs (Argo Rollouts, prometheus-operator): kubernetes-validate has
#: none, so the structural tests below cover them.
CRD_KINDS = {"Rollout", "AnalysisTemplate", "PodMonitor", "PrometheusRule", "Alertmanager"}
#: EKS 1.28 (seed 004 §2.1) and the newest schema bundled.
K8S_VERSIONS = ("1.28", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"Namespace"}
#: The only writable path of a container (read-only root filesystem).
TMP = "/tmp"  # noqa: S108 - a path inside the container


@cache
def rendered(overlay: str) -> tuple[Manifest, ...]:
    return tuple(render(K8S / "overlays" / overlay))


def urr_pods(overlay: str) -> list[PodTemplate]:
    names = {w.name for w in workloads_for(Target.K8S) + workloads_for(Target.KIND)}
    return [p for p in pod_templates(rendered(overlay)) if p.name in names]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_into_its_namespace(overlay):
    docs = rendered(overlay)
    assert docs
    for doc in docs:
        if doc["kind"] in CLUSTER_SCOPED:
            assert doc["metadata"]["name"] == NAMESPACES[overlay]
        else:
            assert doc["metadata"].get("namespace") == NAMESPACES[overlay], doc["metadata"]
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "urr", (
            f"{doc['kind']}/{doc['metadata']['name']} lacks the part-of label"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_without_warnings(overlay):
    _, warnings = kustomize(K8S / "overlays" / overlay)
    assert warnings == ""


def test_the_kubernetes_validate_command_passes_strict_on_prod():
    # The command line exactly as an operator runs it, on the overlay with the most kinds.
    output, _ = kustomize(K8S / "overlays" / "prod")
    result = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-"],
        input=output,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert not [line for line in lines if line.startswith("ERROR")]
    warned = {m.group(1) for line in lines if (m := re.search(r"schema for kind (\w+)", line))}
    assert warned <= CRD_KINDS


def test_kustomizations_use_labels_not_the_deprecated_common_labels():
    files = list(K8S.rglob("kustomization.yaml"))
    assert len(files) >= 7
    for path in files:
        assert "commonLabels" not in path.read_text(encoding="utf-8"), path


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_passes_strict_schema_validation(overlay, version):
    unvalidated = set()
    for doc in rendered(overlay):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            unvalidated.add(doc["kind"])
        except kubernetes_validate.ValidationError as exc:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{overlay}: {name} is invalid for {version}: {exc}")
    assert unvalidated <= CRD_KINDS


def test_strict_validation_rejects_an_unknown_field():
    # Guards the check itself: without strict mode an unknown field passes silently.
    doc = dict(by_kind(rendered("kind"), "Service")["gateway"])
    doc["spec"] = {**doc["spec"], "bogusField": 1}
    kubernetes_validate.validate(doc, "1.28", strict=False)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.28", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_of_the_table_runs_with_a_service(overlay):
    expected = {w.name for w in workloads_for(Target.K8S)}
    if overlay == "kind":
        expected |= {w.name for w in workloads_for(Target.KIND)}
    docs = rendered(overlay)
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    pods = {p.name: p for p in urr_pods(overlay)}
    assert expected <= set(deployments)
    assert set(pods) == expected
    for name in expected:
        entry = workload(name)
        container = pods[name].containers[0]
        assert tuple(container["command"]) == entry.command
        assert container["image"].rsplit(":", 1)[0].endswith(entry.image.name)
        service_port = {p["name"]: p for p in services[name]["spec"]["ports"]}["http"]
        assert service_port["port"] == entry.port
        assert pods[name].resolve_port(service_port["targetPort"]) == entry.port


def _drain_budget_s(container: Mapping[str, Any], docs: tuple[Manifest, ...]) -> float:
    env = container_env(container, docs).values
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    return (
        float(pre_stop[1])
        + float(env["URR_HTTP__DRAIN_DELAY_S"])
        + float(env["URR_HTTP__SHUTDOWN_TIMEOUT_S"])
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_hardened_probed_and_drain_within_the_grace_period(overlay):
    docs = rendered(overlay)
    for pod in urr_pods(overlay):
        spec = pod.spec
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 1000
        assert security["fsGroup"] == 1000
        assert spec["automountServiceAccountToken"] is False
        assert len(pod.containers) == 1
        container = pod.containers[0]
        hardening = container["securityContext"]
        assert hardening["readOnlyRootFilesystem"] is True
        assert hardening["allowPrivilegeEscalation"] is False
        assert hardening["capabilities"]["drop"] == ["ALL"]
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        tmp_mounts = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == TMP}
        assert tmp_mounts & tmp_volumes
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
        probes = {
            "startupProbe": "/health/live",
            "readinessProbe": "/health/ready",
            "livenessProbe": "/health/live",
        }
        for probe, path in probes.items():
            get = container[probe]["httpGet"]
            assert get["path"] == path
            assert pod.resolve_port(get["port"]) == workload(pod.name).port
        # Seed 004 §3.5: up to 150 s to start.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 150
        budget = _drain_budget_s(container, docs)
        assert spec["terminationGracePeriodSeconds"] > budget, pod.name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_profile(overlay):
    docs = rendered(overlay)
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod in pod_templates(docs):
        pod_security = pod.spec.get("securityContext", {})
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", pod.name
        for container in pod.containers + list(pod.spec.get("initContainers", [])):
            security = container.get("securityContext", {})
            assert (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")) is True
            assert security.get("allowPrivilegeEscalation") is False, pod.name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], pod.name
            assert not security.get("privileged", False)


def test_only_kind_runs_the_data_stores_and_the_local_poller():
    for overlay in ("staging", "prod"):
        names = {p.name for p in pod_templates(rendered(overlay))}
        assert not names & {"redis", "postgres", "kafka", "moto", "ticket-poller"}
    kind = {p.name for p in pod_templates(rendered("kind"))}
    assert {"redis", "postgres", "kafka", "moto", "ticket-poller"} <= kind
    assert {"provision-kafka", "provision-aws"} <= kind


def test_prod_scales_gateway_ticket_and_queue_at_70_percent_cpu():
    docs = rendered("prod")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    rollouts = by_kind(docs, "Rollout")
    expected = {"gateway": (3, 10), "ticket": (3, 10), "queue": (3, 8)}
    assert set(hpas) == set(expected)
    for name, (low, high) in expected.items():
        spec = hpas[name]["spec"]
        assert (spec["minReplicas"], spec["maxReplicas"]) == (low, high)
        target = spec["scaleTargetRef"]
        assert target["kind"] == "Rollout"
        assert target["name"] in rollouts
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["averageUtilization"] == 70
    for overlay in ("kind", "staging"):
        assert not by_kind(rendered(overlay), "HorizontalPodAutoscaler")


def test_prod_disruption_budgets_keep_one_pod_of_every_replicated_service():
    docs = rendered("prod")
    budgets = by_kind(docs, "PodDisruptionBudget")
    replicas = _effective_replicas(docs)
    pods = {p.name: p for p in urr_pods("prod")}
    for name, count in replicas.items():
        if count > 1:
            assert name in budgets, f"{name} runs {count} replicas without a budget"
    for name, budget in budgets.items():
        spec = budget["spec"]
        assert spec["minAvailable"] == 1
        selected = [p for p in pods.values() if label_selector_matches(spec["selector"], p.labels)]
        assert [p.name for p in selected] == [name]
        assert replicas[name] > 1, f"{name}: a budget of 1 on a single pod blocks node drains"


def _effective_replicas(docs: tuple[Manifest, ...]) -> dict[str, int]:
    replicas = {name: d["spec"]["replicas"] for name, d in by_kind(docs, "Deployment").items()}
    for rollout in by_kind(docs, "Rollout").values():
        replicas[rollout["spec"]["workloadRef"]["name"]] = rollout["spec"]["replicas"]
    return replicas


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_the_load_balancer_reaches_only_the_public_workloads(overlay):
    docs = rendered(overlay)
    services = by_kind(docs, "Service")
    ingresses = by_kind(docs, "Ingress")
    assert ingresses
    for ingress in ingresses.values():
        annotations = ingress["metadata"]["annotations"]
        assert annotations["alb.ingress.kubernetes.io/healthcheck-path"] == "/health/ready"
        delay = annotations["alb.ingress.kubernetes.io/target-group-attributes"]
        deregistration_s = int(delay.split("=")[1])
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] in PUBLIC_WORKLOADS
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports
                pod = next(p for p in urr_pods(overlay) if p.name == backend["name"])
                pre_stop = pod.containers[0]["lifecycle"]["preStop"]["exec"]["command"]
                # The pod keeps serving until the ALB has deregistered it.
                assert deregistration_s <= int(pre_stop[1])
    assert not by_kind(rendered("kind"), "Ingress")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_runs_one_worker_per_pod(overlay):
    # With URR_WORKERS > 1 each worker process keeps its own metrics registry and a scrape of
    # the shared port reads one of them at random: Kubernetes scales the gateway by pods.
    docs = rendered(overlay)
    (gateway,) = (p for p in pod_templates(docs) if p.name == "gateway")
    env = container_env(gateway.containers[0], docs).values
    assert env.get("URR_WORKERS", "1") == "1"


@pytest.mark.parametrize("overlay", ["staging", "prod"])
def test_the_load_balancer_admits_cloudfront_alone(overlay):
    """Issue 16: the internet-facing ALB took traffic from anywhere, so anyone could reach the
    gateway around the CDN. Its security group now admits CloudFront's origin-facing prefix
    list only (the group is managed with the distribution)."""
    for ingress in by_kind(rendered(overlay), "Ingress").values():
        annotations = ingress["metadata"]["annotations"]
        assert annotations["alb.ingress.kubernetes.io/security-groups"].endswith("from-cloudfront")
        assert annotations["alb.ingress.kubernetes.io/manage-backend-security-group-rules"] == (
            "true"
        )
        assert "alb.ingress.kubernetes.io/inbound-cidrs" not in annotations


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_trusts_forwarded_addresses_by_cidr_only(overlay):
    docs = rendered(overlay)
    (gateway,) = (p for p in pod_templates(docs) if p.name == "gateway")
    env = container_env(gateway.containers[0], docs)
    assert "URR_PROXY__TRUSTED_PROXY_COUNT" not in env.values
    cidrs = env.values["URR_TRUST__PROXY_CIDRS"]
    if overlay in ("staging", "prod"):
        assert cidrs  # the ALB subnets (the pipeline appends CloudFront's ranges)
        assert env.from_secrets["URR_TRUST__ORIGIN_SECRETS"] == "urr-origin-secret/values"
        assert env.values["URR_TRUST__SITE_ORIGINS"].startswith("https://")
    else:
        assert cidrs == ""  # nobody in front: the TCP peer is the client


@pytest.mark.parametrize("overlay", ["prod", "staging"])
def test_managed_overlays_create_the_topics_with_the_seed_layout_before_a_sync(overlay):
    """Seed 004 for MSK: 3 partitions, RF 2, min ISR 2, a week; the Job reads the same broker
    address as the services and runs as an Argo CD PreSync hook."""
    from urr_common.kafka_topics import TopicProvisioningSettings
    from urr_deploycheck.endpoints import settings_from_env

    docs = rendered(overlay)
    job = by_kind(docs, "Job")["kafka-topics"]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "urr_common.kafka_topics"]
    env = container_env(container, docs).values
    settings = settings_from_env(TopicProvisioningSettings, env)
    assert isinstance(settings, TopicProvisioningSettings)
    layout = settings.topics
    assert (layout.partitions, layout.replication_factor, layout.min_insync_replicas) == (3, 2, 2)
    assert layout.retention_ms == 7 * 24 * 3600 * 1000
    services_env = container_env(
        next(p for p in urr_pods(overlay) if p.name == "queue").containers[0], docs
    ).values
    assert settings.kafka.bootstrap_servers == services_env["URR_KAFKA__BOOTSTRAP_SERVERS"]


def test_kind_provisions_topics_with_its_own_job_only():
    names = set(by_kind(rendered("kind"), "Job"))
    assert "kafka-topics" not in names
    assert "provision-kafka" in names
