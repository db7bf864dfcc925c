"""The network grants a rendered overlay needs, derived from each workload's own settings.

For every workload of the table (``services.WORKLOADS``) found in the rendered manifests, its
settings classes are built from the container's environment exactly as the process would build
them; every endpoint they name is mapped to a Service of the overlay (then to the pods behind
it and the container port behind the Service port) or to a CIDR of the overlay's network
(managed AWS services). Third-party servers in the overlay (``services.INFRA``) add the calls
they make themselves. Infrastructure every pod needs (cluster DNS, Prometheus scraping, the load
balancer in front of the gateway) comes from the same table module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_settings import BaseSettings

from urr_common.settings import MetricsSettings, SettingsError
from urr_deploycheck.endpoints import (
    Endpoint,
    SettingsImportError,
    endpoints,
    import_settings_class,
    parse_address,
    settings_from_env,
)
from urr_deploycheck.manifests import (
    Manifest,
    PodTemplate,
    by_kind,
    container_env,
    pod_templates,
    service_selector_matches,
)
from urr_deploycheck.netpol import (
    ANY,
    EGRESS,
    INGRESS,
    Grant,
    ip_peer,
    namespace_name_peer,
    pod_peer,
    port_text,
)
from urr_deploycheck.services import (
    DNS_NAMESPACE,
    DNS_POD_LABELS,
    INFRA,
    JOBS,
    MONITORING_NAMESPACE,
    PUBLIC_WORKLOADS,
    WORKLOADS,
    Network,
    ProvisioningJob,
    Workload,
)

#: The label every pod carries with its workload's table name.
NAME_LABEL = "app.kubernetes.io/name"

ExtraClasses = Mapping[str, type[BaseSettings]]


@dataclass(frozen=True)
class Call:
    """One endpoint a workload calls and what it resolved to."""

    workload: str
    endpoint: Endpoint
    #: ``pod:<workload> <port>/TCP`` or ``ip:<cidr> <port>/TCP``.
    targets: tuple[str, ...]


@dataclass
class Derivation:
    grants: set[Grant] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def workload_settings(
    entry: Workload | ProvisioningJob,
    env: Mapping[str, str],
    extra_classes: ExtraClasses | None = None,
) -> list[BaseSettings]:
    """Every settings object ``entry``'s process builds from ``env``."""
    return [
        settings_from_env(import_settings_class(path, extra_classes), env)
        for path in entry.settings
    ]


def main_container(pod: PodTemplate) -> Mapping[str, Any]:
    for container in pod.containers:
        if container.get("name") == pod.name:
            return container
    return pod.containers[0]


def _service_for(host: str, namespace: str | None, services: Mapping[str, Manifest]) -> str | None:
    """The Service a cluster DNS name means: ``svc``, ``svc.ns``, ``svc.ns.svc[.cluster.local]``."""
    parts = host.split(".")
    name = parts[0]
    if name not in services:
        return None
    rest = parts[1:]
    if not rest:
        return name
    if namespace is not None and rest[0] != namespace:
        return None
    if rest[1:] in ([], ["svc"], ["svc", "cluster", "local"]):
        return name
    return None


class _Resolver:
    def __init__(self, docs: list[Manifest], network: Network, namespace: str | None) -> None:
        self.docs = docs
        self.network = network
        self.namespace = namespace
        self.services = by_kind(docs, "Service")
        self.pods = pod_templates(docs)

    def targets(self, endpoint: Endpoint) -> tuple[list[tuple[PodTemplate, int]], str | None]:
        """``(pods and ports, cidr)`` an endpoint reaches; raises ``LookupError`` if nothing."""
        service_name = _service_for(endpoint.host, self.namespace, self.services)
        if service_name is not None:
            return self._service_targets(service_name, endpoint), None
        cidr = self.network.cidrs.get(endpoint.host)
        if cidr is not None:
            return [], cidr
        raise LookupError(f"host {endpoint.host!r} is neither a Service nor in the overlay network")

    def _service_targets(self, name: str, endpoint: Endpoint) -> list[tuple[PodTemplate, int]]:
        spec = self.services[name]["spec"]
        matching = [p for p in spec.get("ports", []) if int(p["port"]) == endpoint.port]
        if not matching:
            raise LookupError(f"Service {name} has no port {endpoint.port}")
        target_port = matching[0].get("targetPort", endpoint.port)
        result = []
        for pod in self.pods:
            if not service_selector_matches(spec.get("selector"), pod.labels):
                continue
            number = pod.resolve_port(target_port)
            if number is None:
                raise LookupError(f"Service {name} targets port {target_port!r} not on {pod.name}")
            result.append((pod, number))
        if not result:
            raise LookupError(f"Service {name} selects no pod")
        return result


def derive(
    docs: list[Manifest],
    network: Network,
    *,
    namespace: str | None = None,
    extra_classes: ExtraClasses | None = None,
) -> Derivation:
    """The grants ``docs`` need, from the settings of the workloads they run."""
    resolver = _Resolver(docs, network, namespace)
    result = Derivation()
    table = {entry.name: entry for entry in WORKLOADS}
    infra = {item.name: item for item in INFRA}
    jobs = {job.name: job for job in JOBS}
    for pod in resolver.pods:
        name = pod.labels.get(NAME_LABEL, pod.name)
        result.grants |= _dns_grants(pod.name)
        if name in table:
            entry = table[name]
            found = _settings_endpoints(entry, pod, docs, extra_classes, result)
            http = pod.resolve_port("http")
            if http is None:
                result.problems.append(f"{pod.name}: no container port named 'http'")
            elif name in PUBLIC_WORKLOADS:
                result.grants.add(Grant(INGRESS, pod.name, ANY, port_text(http)))
            # Prometheus reaches the metrics listener only, never an API port.
            metrics = pod.resolve_port("metrics")
            if metrics is None:
                result.problems.append(f"{pod.name}: no container port named 'metrics'")
            else:
                result.grants.add(
                    Grant(
                        INGRESS,
                        pod.name,
                        namespace_name_peer(MONITORING_NAMESPACE),
                        port_text(metrics),
                    )
                )
        elif name in infra:
            found = [e for call in infra[name].calls for e in parse_address(call, "calls")]
        elif name in jobs:
            env = container_env(main_container(pod), docs)
            try:
                built = workload_settings(jobs[name], env.values, extra_classes)
            except (SettingsImportError, SettingsError) as exc:
                result.problems.append(f"{pod.name}: {exc}")
                continue
            found = sorted({e for settings in built for e in endpoints(settings)})
        else:
            result.problems.append(f"{pod.name}: not in the service table (services.py)")
            continue
        for endpoint in found:
            _resolve_call(pod, endpoint, resolver, result)
    return result


def _dns_grants(workload: str) -> set[Grant]:
    peer = namespace_name_peer(DNS_NAMESPACE, DNS_POD_LABELS)
    return {Grant(EGRESS, workload, peer, port_text(53, proto)) for proto in ("UDP", "TCP")}


def _settings_endpoints(
    entry: Workload,
    pod: PodTemplate,
    docs: Iterable[Manifest],
    extra_classes: ExtraClasses | None,
    result: Derivation,
) -> list[Endpoint]:
    env = container_env(main_container(pod), docs)
    try:
        built = workload_settings(entry, env.values, extra_classes)
    except (SettingsImportError, SettingsError) as exc:
        result.problems.append(f"{pod.name}: {exc}")
        return []
    result.problems += listener_problems(entry, built, pod)
    for extra in entry.extra_ports:
        for key, value in extra.env:
            if env.values.get(key) != value:
                result.problems.append(f"{pod.name}: {extra.name} listener needs {key}={value}")
    found: list[Endpoint] = []
    for settings in built:
        found += endpoints(settings)
    return sorted(set(found))


def listener_problems(
    entry: Workload, built: list[BaseSettings], pod: PodTemplate | None = None
) -> list[str]:
    """The process must listen where the table (and the manifests' ports) say, on every
    interface: a partial ``URR_HTTP__*`` override silently resets the port to the default."""
    problems = []
    http = getattr(built[0], "http", None) if built else None
    if http is None:
        return [f"{entry.name}: {entry.settings[0]} has no http block"]
    if http.port != entry.port:
        problems.append(
            f"{entry.name}: settings listen on port {http.port}, table says {entry.port}"
        )
    if http.host in ("127.0.0.1", "localhost", "::1"):
        problems.append(f"{entry.name}: listens on {http.host} only (set URR_HTTP__HOST=0.0.0.0)")
    metrics = getattr(built[0], "metrics", None)
    if pod is not None and isinstance(metrics, MetricsSettings):
        port = metrics.port_beside(http.port)
        if pod.resolve_port("metrics") != port:
            problems.append(
                f"{pod.name}: container port 'metrics' is not {port} (URR_METRICS__PORT)"
            )
        if metrics.host in ("127.0.0.1", "localhost", "::1"):
            problems.append(
                f"{entry.name}: metrics listen on {metrics.host} only "
                "(set URR_METRICS__HOST=0.0.0.0 so Prometheus can scrape)"
            )
    if pod is not None:
        for name, number in (("http", entry.port), *((p.name, p.port) for p in entry.extra_ports)):
            if pod.resolve_port(name) != number:
                problems.append(f"{pod.name}: container port {name!r} is not {number}")
    return problems


def _resolve_call(
    pod: PodTemplate, endpoint: Endpoint, resolver: _Resolver, result: Derivation
) -> None:
    if endpoint.is_loopback:
        result.problems.append(
            f"{pod.name}: {endpoint.field} points at {endpoint.host}:{endpoint.port} "
            "(a local default the manifests do not override)"
        )
        return
    try:
        pods, cidr = resolver.targets(endpoint)
    except LookupError as exc:
        result.problems.append(f"{pod.name}: {endpoint.field}: {exc}")
        return
    targets = []
    port = port_text(endpoint.port)
    if cidr is not None:
        result.grants.add(Grant(EGRESS, pod.name, ip_peer(cidr), port))
        targets.append(f"{ip_peer(cidr)} {port}")
    for target, number in pods:
        target_port = port_text(number)
        result.grants.add(Grant(EGRESS, pod.name, pod_peer(target.name), target_port))
        result.grants.add(Grant(INGRESS, target.name, pod_peer(pod.name), target_port))
        targets.append(f"{pod_peer(target.name)} {target_port}")
    result.calls.append(Call(pod.name, endpoint, tuple(targets)))
