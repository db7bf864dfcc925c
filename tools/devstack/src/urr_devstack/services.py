"""The one table of services the local stack runs, and the Procfile honcho runs them from.

A service joins the stack by one line in ``SERVICES``: it is started only when its module is
installed (``importlib.util.find_spec``), so entries can name services not written yet.

``env`` values are templates filled from the running stack (``str.format``):
``{<service>_url}`` and ``{<service>_port}`` for every service with a port (``-`` in a name
becomes ``_``), ``{host}``, ``{redis_url}``, ``{postgres_dsn}``, ``{kafka_bootstrap}``,
``{aws_endpoint_url}``, ``{ticket_queue_url}`` and ``{ticket_dlq_url}``.
"""

from __future__ import annotations

import importlib.util
import shlex
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

HEALTH_READY = "/health/ready"


@dataclass(frozen=True)
class ServiceSpec:
    """One long-running process of the stack."""

    name: str
    #: Run as ``python -m <module>``.
    module: str
    #: Its HTTP port (handed over as ``URR_HTTP__PORT``); None for a process with no listener.
    port: int | None = None
    #: Path answering 200 once the service is ready; None when it has no HTTP listener.
    health_path: str | None = HEALTH_READY
    #: Extra environment, as templates (see the module docstring).
    env: Mapping[str, str] = field(default_factory=dict)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("auth", "urr_auth", 3005),
    ServiceSpec(
        "gateway",
        "urr_gateway",
        3001,
        env={
            "URR_UPSTREAMS__AUTH": "{auth_url}",
            "URR_UPSTREAMS__QUEUE": "{queue_url}",
            "URR_UPSTREAMS__TICKET": "{ticket_url}",
        },
    ),
    ServiceSpec("queue", "urr_queue", 3007),
    ServiceSpec("ticket", "urr_ticket", 3002, env={"URR_TICKET_QUEUE_URL": "{ticket_queue_url}"}),
    ServiceSpec("apigw", "urr_vwr_lambda.local.apigw", 3010),
    ServiceSpec(
        "edge",
        "urr_vwr_lambda.local.edge",
        8000,
        env={"URR_EDGE__ORIGIN_URL": "{gateway_url}", "URR_EDGE__VWR_API_URL": "{apigw_url}"},
    ),
    ServiceSpec(
        "vwr-scheduler",
        "urr_vwr_lambda.local.scheduler",
        health_path=None,
        env={"URR_QUEUE_URL": "{queue_url}"},
    ),
    ServiceSpec(
        "ticket-worker",
        "urr_ticket_worker.local.poller",
        health_path=None,
        env={"URR_TICKET_QUEUE_URL": "{ticket_queue_url}"},
    ),
)


class ServiceTableError(ValueError):
    """The service table or its overrides do not make sense; the message says where."""


@dataclass(frozen=True)
class PlannedService:
    """A service as it will run: its resolved port, health URL and full extra environment."""

    name: str
    module: str
    port: int | None
    health_url: str | None
    env: Mapping[str, str]

    def command(self, python: str) -> str:
        """The Procfile command: ``exec env VAR=... python -m module`` (one process, no shell)."""
        assignments = [f"{key}={value}" for key, value in sorted(self.env.items())]
        argv = ["env", *assignments, python, "-m", self.module]
        return "exec " + shlex.join(argv)


def is_runnable(module: str) -> bool:
    """True when ``python -m module`` would find something to run."""
    try:
        spec = importlib.util.find_spec(module)
        if spec is None:
            return False
        if spec.submodule_search_locations is not None:
            # A package runs through its __main__ module.
            return importlib.util.find_spec(f"{module}.__main__") is not None
    except (ImportError, ValueError):
        # A parent package missing, or broken: the service is not there to run.
        return False
    return True


def resolve_ports(
    table: Sequence[ServiceSpec],
    overrides: Mapping[str, int],
    *,
    reserved: Mapping[str, int] | None = None,
) -> dict[str, int | None]:
    """Each service's port after overrides; every port used once, overrides name services."""
    names = {spec.name for spec in table}
    if len(names) != len(table):
        raise ServiceTableError("two services share a name in the service table")
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ServiceTableError(
            f"URR_DEVSTACK__SERVICE_PORTS names unknown services {unknown}; known: {sorted(names)}"
        )
    ports: dict[str, int | None] = {}
    owner_of: dict[int, str] = {
        port: f"the {what} server" for what, port in (reserved or {}).items()
    }
    for spec in table:
        port = overrides.get(spec.name, spec.port)
        if port is not None and spec.port is None:
            raise ServiceTableError(f"service {spec.name!r} has no HTTP listener to move")
        if port is not None:
            if port in owner_of:
                raise ServiceTableError(
                    f"service {spec.name!r} and {owner_of[port]} both use port {port}"
                )
            owner_of[port] = f"service {spec.name!r}"
        ports[spec.name] = port
    return ports


def template_context(
    host: str, ports: Mapping[str, int | None], infra: Mapping[str, str]
) -> dict[str, str]:
    """The values ``env`` templates may use."""
    context = {"host": host, **infra}
    for name, port in ports.items():
        if port is not None:
            key = name.replace("-", "_")
            context[f"{key}_url"] = f"http://{host}:{port}"
            context[f"{key}_port"] = str(port)
    return context


def render_env(spec: ServiceSpec, context: Mapping[str, str]) -> dict[str, str]:
    """``spec.env`` with its templates filled; an unknown name is an error naming it."""
    rendered = {}
    for key, template in spec.env.items():
        names = {part[1] for part in string.Formatter().parse(template) if part[1] is not None}
        missing = sorted(name for name in names if name not in context)
        if missing:
            raise ServiceTableError(
                f"service {spec.name!r}: {key} uses {missing}, which the stack does not know "
                f"(known: {sorted(context)})"
            )
        rendered[key] = template.format_map(context)
    return rendered


def plan_services(
    table: Sequence[ServiceSpec],
    *,
    host: str,
    ports: Mapping[str, int | None],
    infra: Mapping[str, str],
    skip: Iterable[str] = (),
    runnable: Callable[[str], bool] = is_runnable,
) -> tuple[list[PlannedService], list[ServiceSpec]]:
    """The services to start (in table order) and the ones left out (not installed)."""
    skipped = set(skip)
    unknown = sorted(skipped - {spec.name for spec in table})
    if unknown:
        raise ServiceTableError(f"URR_DEVSTACK__SKIP_SERVICES names unknown services {unknown}")
    context = template_context(host, ports, infra)
    planned: list[PlannedService] = []
    absent: list[ServiceSpec] = []
    for spec in table:
        if spec.name in skipped:
            continue
        if not runnable(spec.module):
            absent.append(spec)
            continue
        env = render_env(spec, context)
        port = ports.get(spec.name)
        health_url = None
        if port is not None:
            env["URR_HTTP__HOST"] = host
            env["URR_HTTP__PORT"] = str(port)
            if spec.health_path is not None:
                health_url = f"http://{host}:{port}{spec.health_path}"
        planned.append(PlannedService(spec.name, spec.module, port, health_url, env))
    return planned, absent


def render_procfile(planned: Sequence[PlannedService], python: str) -> str:
    """A Procfile honcho (or foreman) can run, one line per service."""
    lines = ["# Generated by urr-devstack from urr_devstack/services.py; do not edit."]
    lines += [f"{service.name}: {service.command(python)}" for service in planned]
    return "\n".join(lines) + "\n"


def render_env_file(env: Mapping[str, str]) -> str:
    """A ``.env`` file (``KEY=value``, shell-quoted) with the environment common to all."""
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
