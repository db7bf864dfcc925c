"""The one table of services the local stack runs, and the Procfile honcho runs them from.

A service joins the stack by one line in ``SERVICES``: it is started only when its module is
installed (``importlib.util.find_spec``), so entries can name services not written yet.

``env`` values are templates filled from the running stack (``str.format``):
``{<listener>_url}`` and ``{<listener>_port}`` for every service with a port and every extra
listener (``-`` in a name becomes ``_``: ``{vwr_apigw_url}``, ``{gateway_internal_port}``),
``{host}``, ``{state_dir}``, ``{redis_url}``, ``{postgres_dsn}``, ``{kafka_bootstrap}``,
``{aws_endpoint_url}``, ``{ticket_queue_url}``, ``{ticket_dlq_url}``, ``{counters_table}`` and
``{positions_table}``.

Names, modules, ports and variable names follow each service's own settings class (and the
deployment table in ``tools/deploycheck``); ports are the DESIGN.md §3 ones, plus 3020-3025 for
the booking back end's processes, 3012 for the VWR scheduler (its default 3011 is the
gateway's internal listener on one host), 3030 for the admission log, 3040 for the
rate-limit admin API and 3041 for its usage-snapshot scheduler. Each service's ``/metrics``
listener is its port + 1000; the queue's internal listener (``/internal/...``, for the ticket
service's credential only) is its port + 2000, 5007.
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
    #: Further listeners by name with their default ports, moved like the main one
    #: (``URR_DEVSTACK__SERVICE_PORTS__<SERVICE>_<LISTENER>``); hand them over in ``env``.
    extra_ports: Mapping[str, int] = field(default_factory=dict)

    def listeners(self) -> dict[str, int | None]:
        """Every port this service opens, by the name its override uses."""
        return {
            self.name: self.port,
            **{f"{self.name}-{extra}": port for extra, port in self.extra_ports.items()},
        }


#: The VWR processes share where the edge configuration document lives and the table names.
_VWR_ENV = {
    "URR_EDGE_CONFIG__TARGET": "{state_dir}/vwr/edge-config.json",
    "URR_TABLES__COUNTERS": "{counters_table}",
    "URR_TABLES__POSITIONS": "{positions_table}",
    "URR_QUEUE__URL": "{queue_url}",
    # The random method's draw goes to the admission log (urr_vwr_lambda.grant_log).
    "URR_GRANT_LOG__ENABLED": "true",
    "URR_GRANT_LOG__KAFKA__BOOTSTRAP_SERVERS": "{kafka_bootstrap}",
}

#: The ticket processes call the queue's internal listener (event set-up, completions) with
#: their credential (``URR_QUEUE_CREDENTIAL__*``, stack.common_env).
_TICKET_ENV = {
    "URR_QUEUE_ADMIN__BASE_URL": "{queue_internal_url}",
    "URR_QUEUE_COMPLETION__BASE_URL": "{queue_internal_url}",
}

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
            "URR_UPSTREAMS__ADMISSION_LOG": "{admission_log_url}",
            "URR_UPSTREAMS__RATELIMIT_ADMIN": "{ratelimit_admin_url}",
            "URR_INTERNAL__HOST": "{host}",
            "URR_INTERNAL__PORT": "{gateway_internal_port}",
            # Only the gateway holds the private half of the identity key.
            "URR_IDENTITY__PRIVATE_KEY_FILE": "{state_dir}/keys/identity/local-1.pem",
            "URR_IDENTITY__KEY_ID": "local-1",
            # Every local client is 127.0.0.1 (the edge stand-in, Locust, the browser), so the
            # per-address shedder (docs/performance/refusals.md) gets a crowd's budget here,
            # not one NAT's: a load test must measure the stack, not the shedder.
            "URR_SHED__REQUESTS_PER_S": "20000",
            "URR_SHED__REQUEST_BURST": "40000",
            "URR_SHED__MAX_CONNECTIONS_PER_ADDRESS": "10000",
        },
        extra_ports={"internal": 3011},
    ),
    # The operator console switches Tier 1's waiting room through its admin API with the
    # operator's own token (its seat figures read the booking database: stack.common_env).
    # Its /internal routes (the ticket service's calls) are on their own listener.
    ServiceSpec(
        "queue",
        "urr_queue",
        3007,
        env={
            "URR_CONSOLE__TIER1_ADMIN_URL": "{vwr_apigw_url}",
            "URR_INTERNAL__HOST": "{host}",
            "URR_INTERNAL__PORT": "{queue_internal_port}",
            # Fewer, fuller record batches: the local broker (Tansu, memory storage) keeps one
            # object per batch and lists every object of the partition on each fetch that
            # finds new data, so its CPU grows with the batches it holds (docs/performance.md,
            # "Flash crowd rate at 50 a second"). queue-events has no reader in a hurry.
            "URR_KAFKA__LINGER_MS": "200",
        },
        extra_ports={"internal": 5007},
    ),
    ServiceSpec("ticket", "urr_ticket", 3002, env=_TICKET_ENV),
    ServiceSpec("ticket-outcomes", "urr_ticket.outcomes", 3024, env=_TICKET_ENV),
    # In AWS the booking worker is a Lambda on the SQS FIFO queue; locally a poller feeds it.
    ServiceSpec("ticket-poller", "urr_ticket_worker.local.poller", 3020),
    ServiceSpec("ticket-relay", "urr_ticket_worker.relay", 3021),
    ServiceSpec("ticket-payment", "urr_ticket_worker.payment", 3022),
    ServiceSpec("ticket-stats", "urr_ticket_worker.stats", 3023),
    # The DLQ depth and Kafka consumer lag, which no process of ours reports in AWS.
    ServiceSpec("ticket-exporter", "urr_ticket_worker.exporter", 3025),
    # Public Tier-1 routes answer only calls carrying the origin-verify secret, which the edge
    # stand-in adds like CloudFront (devstack/aws.py provisions it in moto).
    ServiceSpec(
        "vwr-apigw",
        "urr_vwr_lambda.local.apigw",
        3010,
        env={**_VWR_ENV, "URR_GATES__ORIGIN__SECRET_ID": "urr-vwr-origin-verify"},
    ),
    ServiceSpec(
        "vwr-edge",
        "urr_vwr_lambda.local.edge",
        8000,
        env={
            "URR_GATEWAY_URL": "{gateway_url}",
            "URR_API_URL": "{vwr_apigw_url}",
            "URR_EDGE_CONFIG__TARGET": "{state_dir}/vwr/edge-config.json",
            "URR_ORIGIN__SECRET_ID": "urr-vwr-origin-verify",
        },
    ),
    ServiceSpec("vwr-scheduler", "urr_vwr_lambda.local.scheduler", 3012, env=_VWR_ENV),
    # The public admission log (issue 19): tree heads signed with the stack's "log" key.
    ServiceSpec(
        "admission-log",
        "urr_admission_log",
        3030,
        env={
            "URR_TREE_HEADS__PRIVATE_KEY_FILE": "{state_dir}/keys/log/local-1.pem",
            "URR_TREE_HEADS__KEY_ID": "local-1",
        },
    ),
    # The rate-limit Admin API (issue 18), reached through the gateway's admin routes.
    ServiceSpec("ratelimit-admin", "urr_ratelimit_admin", 3040),
    # Hourly usage snapshots from the limiters' Redis counters into PostgreSQL (issue 18).
    ServiceSpec("ratelimit-usage", "urr_ratelimit_admin.snapshots", 3041),
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
    """Every listener's port after overrides, by listener name; each port used once.

    Override names are compared with ``_`` read as ``-`` (environment variable names cannot
    hold a ``-``): ``VWR_SCHEDULER`` moves ``vwr-scheduler``.
    """
    if len({spec.name for spec in table}) != len(table):
        raise ServiceTableError("two services share a name in the service table")
    defaults: dict[str, int | None] = {}
    for spec in table:
        defaults.update(spec.listeners())
    wanted = {name.lower().replace("_", "-"): port for name, port in overrides.items()}
    unknown = sorted(set(wanted) - set(defaults))
    if unknown:
        raise ServiceTableError(
            f"URR_DEVSTACK__SERVICE_PORTS names unknown services {unknown}; "
            f"known: {sorted(defaults)}"
        )
    ports: dict[str, int | None] = {}
    owner_of = {port: f"the {what} server" for what, port in (reserved or {}).items()}
    for name, default in defaults.items():
        port = wanted.get(name, default)
        if port is not None and default is None:
            raise ServiceTableError(f"service {name!r} has no HTTP listener to move")
        if port is not None:
            if port in owner_of:
                raise ServiceTableError(f"{name!r} and {owner_of[port]} both use port {port}")
            owner_of[port] = repr(name)
        ports[name] = port
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


@dataclass(frozen=True)
class SetupTask:
    """A one-shot command run once every service is ready (seed data, configure queues)."""

    name: str
    #: Run as ``python -m <module> <args...>``.
    module: str
    args: tuple[str, ...] = ()
    #: Extra environment, as templates (see the module docstring).
    env: Mapping[str, str] = field(default_factory=dict)


#: The ``demo`` event (100 seats, A1-J10) and its Tier-2 queue, so a newcomer can walk the
#: whole journey, and the named demo buyers (``fan1@demo.urr.test`` ... ``fan6``, README) to
#: walk it as a crowd from several browsers; idempotent, so they run at every start.
SETUP_TASKS: tuple[SetupTask, ...] = (
    SetupTask(
        "seed-demo",
        "urr_ticket",
        ("seed",),
        env={"URR_QUEUE_ADMIN__BASE_URL": "{queue_internal_url}"},
    ),
    SetupTask("seed-demo-accounts", "urr_auth", ("seed-demo-accounts",)),
)


@dataclass(frozen=True)
class PlannedTask:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


def plan_setup_tasks(
    tasks: Sequence[SetupTask],
    *,
    host: str,
    ports: Mapping[str, int | None],
    infra: Mapping[str, str],
    python: str,
    runnable: Callable[[str], bool] = is_runnable,
) -> list[PlannedTask]:
    """The setup commands whose module is installed, with their environment filled in."""
    context = template_context(host, ports, infra)
    return [
        PlannedTask(
            task.name,
            (python, "-m", task.module, *task.args),
            render_env(ServiceSpec(task.name, task.module, env=task.env), context),
        )
        for task in tasks
        if runnable(task.module)
    ]


def render_procfile(planned: Sequence[PlannedService], python: str) -> str:
    """A Procfile honcho (or foreman) can run, one line per service."""
    lines = ["# Generated by urr-devstack from urr_devstack/services.py; do not edit."]
    lines += [f"{service.name}: {service.command(python)}" for service in planned]
    return "\n".join(lines) + "\n"


def render_env_file(env: Mapping[str, str]) -> str:
    """A ``.env`` file (``KEY=value``, shell-quoted) with the environment common to all."""
    return "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
