"""docker-compose.yml against the services' settings: ports, dependencies, healthchecks.

Each URR service's settings are built from the environment its container gets (the image's
``ENV`` overlaid with the compose ``environment``). Then: it listens on the port its healthcheck
asks and its published ports map; every endpoint its settings name is a compose service
listening on that port, which it waits for (``service_healthy``; the provisioning one-shots with
``service_completed_successfully``) and which has a healthcheck.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic_settings import BaseSettings

from urr_common.settings import SettingsError
from urr_deploycheck.derive import listener_problems, workload_settings
from urr_deploycheck.dockerfiles import IMAGE_ENV
from urr_deploycheck.endpoints import Endpoint, SettingsImportError, endpoints, parse_address
from urr_deploycheck.services import INFRA, WORKLOADS, Target, Workload

_HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/health/ready")

Compose = Mapping[str, Any]


@dataclass(frozen=True)
class ComposeCall:
    service: str
    endpoint: Endpoint
    callee: str


def image_env(entry: Workload) -> dict[str, str]:
    """What the image's ``ENV`` sets for the settings (see ``dockerfiles.render_dockerfile``)."""
    return {
        "URR_HTTP__HOST": "0.0.0.0",
        "URR_HTTP__PORT": str(entry.image.port),
        **dict(IMAGE_ENV.get(entry.image.folder, ())),
    }


def container_env(entry: Workload, service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {**image_env(entry), **{k: str(v) for k, v in environment.items()}}


def health_port(service: Mapping[str, Any]) -> int | None:
    test = (service.get("healthcheck") or {}).get("test") or []
    match = _HEALTH_URL.search(" ".join(map(str, test)))
    return int(match.group(1)) if match else None


def published_container_ports(service: Mapping[str, Any]) -> list[int]:
    ports = []
    for item in service.get("ports") or []:
        text = str(item["target"]) if isinstance(item, dict) else str(item)
        ports.append(int(text.split(":")[-1].split("/")[0]))
    return ports


def _depends(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


@dataclass
class ComposeCheck:
    calls: list[ComposeCall]
    problems: list[str]


def check(
    compose: Compose, extra_classes: Mapping[str, type[BaseSettings]] | None = None
) -> ComposeCheck:
    services: Mapping[str, Any] = compose["services"]
    listening: dict[str, set[int]] = {i.name: {i.port} for i in INFRA if i.port}
    result = ComposeCheck([], [])
    found: dict[str, list[Endpoint]] = {}
    for entry in WORKLOADS:
        if Target.COMPOSE not in entry.targets:
            continue
        if entry.name not in services:
            result.problems.append(f"{entry.name}: missing from docker-compose.yml")
            continue
        service = services[entry.name]
        try:
            built = workload_settings(entry, container_env(entry, service), extra_classes)
        except (SettingsImportError, SettingsError) as exc:
            result.problems.append(f"{entry.name}: {exc}")
            continue
        result.problems += listener_problems(entry, built)
        ports = {entry.port, *(extra.port for extra in entry.extra_ports)}
        listening[entry.name] = ports
        found[entry.name] = sorted({e for settings in built for e in endpoints(settings)})
        result.problems += _service_shape(entry, service, ports)
    for infra in INFRA:
        if Target.COMPOSE in infra.targets:
            found[infra.name] = [e for call in infra.calls for e in parse_address(call, "calls")]
    provisioners = {i.name: {e.host for e in found.get(i.name, [])} for i in INFRA if i.calls}
    for name, calls in found.items():
        result.problems += _dependencies(name, calls, services, listening, provisioners, result)
    result.problems += _cycles(services)
    return result


def _cycles(services: Mapping[str, Any]) -> list[str]:
    """``depends_on`` must be a DAG, or compose never starts the services on the cycle."""
    graph = {name: set(_depends(service)) for name, service in services.items()}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> list[str]:
        if name in path:
            return [" -> ".join((*path[path.index(name) :], name))]
        if name in done or name not in graph:
            return []
        found = [cycle for dep in sorted(graph[name]) for cycle in visit(dep, (*path, name))]
        done.add(name)
        return found

    return [f"dependency cycle: {cycle}" for name in sorted(graph) for cycle in visit(name, ())]


def _service_shape(entry: Workload, service: Mapping[str, Any], ports: set[int]) -> list[str]:
    problems = []
    if health_port(service) != entry.port:
        problems.append(f"{entry.name}: healthcheck does not ask /health/ready on {entry.port}")
    for port in published_container_ports(service):
        if port not in ports:
            problems.append(f"{entry.name}: publishes container port {port} nobody listens on")
    if list(map(str, service.get("command") or [])) != list(entry.command):
        problems.append(f"{entry.name}: command is not {list(entry.command)}")
    build = service.get("build") or {}
    dockerfile = f"services/{entry.image.folder}/Dockerfile"
    if build.get("dockerfile") != dockerfile:
        problems.append(f"{entry.name}: builds from {build.get('dockerfile')}, not {dockerfile}")
    if service.get("image") != f"{entry.image.name}:local":
        problems.append(f"{entry.name}: image is not {entry.image.name}:local")
    return problems


def _dependencies(
    name: str,
    calls: list[Endpoint],
    services: Mapping[str, Any],
    listening: Mapping[str, set[int]],
    provisioners: Mapping[str, set[str]],
    result: ComposeCheck,
) -> list[str]:
    problems = []
    depends = _depends(services[name])
    for endpoint in calls:
        callee = endpoint.host
        if callee not in services:
            problems.append(f"{name}: {endpoint.field} names {callee!r}, not a compose service")
            continue
        result.calls.append(ComposeCall(name, endpoint, callee))
        if endpoint.port not in listening.get(callee, set()):
            problems.append(
                f"{name}: {endpoint.field} calls {callee}:{endpoint.port}, not its port"
            )
        if depends.get(callee) != "service_healthy":
            problems.append(f"{name}: calls {callee} without depends_on service_healthy")
        if not services[callee].get("healthcheck"):
            problems.append(f"{callee}: called by {name} but has no healthcheck")
        for provisioner, targets in provisioners.items():
            done = depends.get(provisioner) == "service_completed_successfully"
            if callee in targets and provisioner != name and not done:
                problems.append(f"{name}: uses {callee} before {provisioner} completed")
    for dependency in depends:
        if dependency not in services:
            problems.append(f"{name}: depends on unknown service {dependency}")
    return problems
