"""Rendered Kubernetes manifests: ``kubectl kustomize`` output as plain dicts, and the pod
templates, ports and environment of every workload in it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]

#: Kinds whose pods we run, and where their pod template lives.
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "Rollout": ("spec", "template"),
}


class RenderError(RuntimeError):
    """kustomize refused an overlay."""


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        raise RenderError("kubectl is not on PATH (needed for `kubectl kustomize`)")
    return path


def kustomize(directory: Path) -> tuple[str, str]:
    """``kubectl kustomize <directory>``: (manifests, warnings); ``RenderError`` on failure."""
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout, result.stderr


def render(directory: Path) -> list[Manifest]:
    """``kubectl kustomize <directory>`` parsed into documents."""
    output, _ = kustomize(directory)
    return [doc for doc in yaml.safe_load_all(output) if doc]


def by_kind(docs: Iterable[Manifest], kind: str) -> dict[str, Manifest]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc.get("kind") == kind}


def dig(doc: Mapping[str, Any], path: Iterable[str]) -> Any:
    node: Any = doc
    for key in path:
        node = node[key]
    return node


@dataclass(frozen=True)
class PodTemplate:
    """The pods one workload object runs."""

    kind: str
    name: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]

    @property
    def containers(self) -> list[Mapping[str, Any]]:
        return list(self.spec.get("containers", []))

    def container_ports(self) -> dict[str, int]:
        """Named ports (and each number under its own text) of every container."""
        ports: dict[str, int] = {}
        for container in self.containers:
            for port in container.get("ports", []):
                number = int(port["containerPort"])
                ports[str(number)] = number
                if "name" in port:
                    ports[port["name"]] = number
        return ports

    def resolve_port(self, port: int | str) -> int | None:
        if isinstance(port, int):
            return port if str(port) in self.container_ports() else None
        return self.container_ports().get(port)


def pod_templates(docs: Iterable[Manifest]) -> list[PodTemplate]:
    """Every workload with a pod template (a Rollout with ``workloadRef`` has none)."""
    templates = []
    for doc in docs:
        path = POD_TEMPLATE_PATHS.get(doc.get("kind", ""))
        if path is None:
            continue
        try:
            template = dig(doc, path)
        except KeyError:
            continue
        templates.append(
            PodTemplate(
                kind=doc["kind"],
                name=doc["metadata"]["name"],
                labels=dict(template.get("metadata", {}).get("labels", {})),
                spec=template["spec"],
            )
        )
    return templates


@dataclass(frozen=True)
class ContainerEnv:
    """A container's environment as far as the manifests say it."""

    values: dict[str, str]
    #: Variables filled from Secrets (not in git): name -> ``secret/key``.
    from_secrets: dict[str, str]


def container_env(container: Mapping[str, Any], docs: Iterable[Manifest]) -> ContainerEnv:
    """Resolve ``env`` and ``envFrom`` against the rendered ConfigMaps (later entries win)."""
    config_maps = by_kind(docs, "ConfigMap")
    values: dict[str, str] = {}
    from_secrets: dict[str, str] = {}
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = config_maps[source["configMapRef"]["name"]].get("data", {})
            values.update({prefix + key: str(value) for key, value in data.items()})
        elif "secretRef" in source:
            from_secrets[prefix + "*"] = source["secretRef"]["name"]
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            values[name] = str(item["value"])
            continue
        ref = item.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            key_ref = ref["configMapKeyRef"]
            values[name] = str(config_maps[key_ref["name"]]["data"][key_ref["key"]])
        elif "secretKeyRef" in ref:
            key_ref = ref["secretKeyRef"]
            from_secrets[name] = f"{key_ref['name']}/{key_ref['key']}"
    return ContainerEnv(values, from_secrets)


def label_selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics (``matchLabels`` and ``matchExpressions``)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def service_selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service's plain ``selector`` map."""
    if not selector:
        return False
    return all(labels.get(key) == value for key, value in selector.items())


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)
