"""What the NetworkPolicies of a rendered overlay allow, as a set of grants.

A grant is one (direction, selected workload, peer, port) the policies open. Peers are written
as text so two sets compare and print readably: ``pod:<workload>`` (same namespace),
``ns:<namespace selector>/<pod selector>``, ``ip:<cidr>`` and ``any``. Ports are
``<number>/<protocol>``, or ``*`` for every port of a peer outside the namespace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from urr_deploycheck.manifests import Manifest, PodTemplate, label_selector_matches

INGRESS = "ingress"
EGRESS = "egress"
ANY = "any"


@dataclass(frozen=True, order=True)
class Grant:
    direction: str
    workload: str
    peer: str
    port: str

    def __str__(self) -> str:
        arrow = "<-" if self.direction == INGRESS else "->"
        return f"{self.workload} {arrow} {self.peer} {self.port}"


def pod_peer(workload: str) -> str:
    return f"pod:{workload}"


def ip_peer(cidr: str, excepted: Iterable[str] = ()) -> str:
    rest = sorted(excepted)
    return f"ip:{cidr}" + (f" except {','.join(rest)}" if rest else "")


def namespace_peer(
    namespace_selector: Mapping[str, Any], pod_selector: Mapping[str, Any] | None
) -> str:
    return f"ns:{_canonical(namespace_selector)}/{_canonical(pod_selector or {})}"


def namespace_name_peer(namespace: str, pod_labels: Mapping[str, str] | None = None) -> str:
    """The peer written by ``namespaceSelector: {matchLabels: {kubernetes.io/metadata.name}}``."""
    pods = {"matchLabels": dict(pod_labels)} if pod_labels else {}
    return namespace_peer({"matchLabels": {"kubernetes.io/metadata.name": namespace}}, pods)


def port_text(port: int | str, protocol: str = "TCP") -> str:
    return f"{port}/{protocol}"


def _canonical(selector: Mapping[str, Any]) -> str:
    cleaned = {key: value for key, value in selector.items() if value}
    return json.dumps(cleaned, sort_keys=True, separators=(",", ":"))


def _policy_types(spec: Mapping[str, Any]) -> list[str]:
    declared = spec.get("policyTypes")
    if declared:
        return list(declared)
    return ["Ingress", *(["Egress"] if "egress" in spec else [])]


def policy_grants(docs: Iterable[Manifest], pods: list[PodTemplate]) -> set[Grant]:
    """Every grant the NetworkPolicies in ``docs`` make for the pods of ``pods``."""
    grants: set[Grant] = set()
    for policy in docs:
        if policy.get("kind") != "NetworkPolicy":
            continue
        spec = policy["spec"]
        types = _policy_types(spec)
        for pod in pods:
            if not label_selector_matches(spec.get("podSelector", {}), pod.labels):
                continue
            if "Ingress" in types:
                for rule in spec.get("ingress") or []:
                    grants |= _ingress_rule(pod, rule, pods)
            if "Egress" in types:
                for rule in spec.get("egress") or []:
                    grants |= _egress_rule(pod, rule, pods)
    return grants


def isolated(docs: Iterable[Manifest], pod: PodTemplate, policy_type: str) -> bool:
    """Whether some policy selects ``pod`` for ``policy_type`` (so only grants let traffic in)."""
    return any(
        doc.get("kind") == "NetworkPolicy"
        and policy_type in _policy_types(doc["spec"])
        and label_selector_matches(doc["spec"].get("podSelector", {}), pod.labels)
        for doc in docs
    )


def _peers(peers: list[Mapping[str, Any]] | None, pods: list[PodTemplate]) -> list[str]:
    if not peers:
        return [ANY]
    result: list[str] = []
    for peer in peers:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            result.append(ip_peer(block["cidr"], block.get("except") or ()))
        elif "namespaceSelector" in peer:
            result.append(namespace_peer(peer["namespaceSelector"], peer.get("podSelector")))
        else:
            matched = [
                p.name for p in pods if label_selector_matches(peer["podSelector"], p.labels)
            ]
            # A selector that matches no pod is still an opening: keep it visible.
            result += [pod_peer(name) for name in matched] or [
                pod_peer("<none matching " + _canonical(peer["podSelector"]) + ">")
            ]
    return result


def _ports_on(pod: PodTemplate, ports: list[Mapping[str, Any]] | None) -> list[str]:
    """Port texts of a rule, resolved against the pod that receives the traffic."""
    if not ports:
        return sorted({port_text(number) for number in pod.container_ports().values()})
    result = []
    for item in ports:
        protocol = item.get("protocol", "TCP")
        port = item.get("port")
        if port is None:
            result.append(port_text("*", protocol))
            continue
        if "endPort" in item:
            result.append(port_text(f"{port}-{item['endPort']}", protocol))
            continue
        resolved = pod.resolve_port(port) if isinstance(port, str) else int(port)
        result.append(port_text(resolved if resolved is not None else f"{port}?", protocol))
    return result


def _ports_outside(ports: list[Mapping[str, Any]] | None) -> list[str]:
    if not ports:
        return ["*"]
    return [
        port_text(item.get("port", "*"), item.get("protocol", "TCP"))
        + (f"-{item['endPort']}" if "endPort" in item else "")
        for item in ports
    ]


def _ingress_rule(pod: PodTemplate, rule: Mapping[str, Any], pods: list[PodTemplate]) -> set[Grant]:
    return {
        Grant(INGRESS, pod.name, peer, port)
        for peer in _peers(rule.get("from"), pods)
        for port in _ports_on(pod, rule.get("ports"))
    }


def _egress_rule(pod: PodTemplate, rule: Mapping[str, Any], pods: list[PodTemplate]) -> set[Grant]:
    grants = set()
    by_name = {p.name: p for p in pods}
    for peer in _peers(rule.get("to"), pods):
        target = by_name.get(peer.removeprefix("pod:")) if peer.startswith("pod:") else None
        ports = (
            _ports_on(target, rule.get("ports"))
            if target is not None
            else _ports_outside(rule.get("ports"))
        )
        grants |= {Grant(EGRESS, pod.name, peer, port) for port in ports}
    return grants
