"""``urr-devstack up``: servers, provisioning, keys, then the services under honcho.

The order is the dependency order: servers (reused or started), then what lives in them
(database, topics, queues, tables), then keys and the admin password, then the services with
one common environment. Everything we start is stopped in reverse order on the way out,
whatever the way out is (Ctrl-C, SIGTERM, a service dying, a timeout, an exception).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from urr_common import kafka_topics
from urr_devstack import aws, postgres
from urr_devstack.infra import Infra, InfraError, start_infra
from urr_devstack.keys import (
    LocalKey,
    chosen_admin,
    ensure_admin_password,
    ensure_service_secret,
    ensure_signing_keys,
)
from urr_devstack.monitoring import MonitoringError, start_monitoring
from urr_devstack.procs import is_listening
from urr_devstack.runstate import RUNFILE_NAME, ProcessRecord, RunState, cmdline
from urr_devstack.services import (
    SERVICES,
    SETUP_TASKS,
    PlannedService,
    PlannedTask,
    ServiceSpec,
    is_runnable,
    plan_services,
    plan_setup_tasks,
    render_env_file,
    render_procfile,
    resolve_ports,
)
from urr_devstack.settings import DevstackSettings, find_repo_root
from urr_devstack.signals import Stopping, StopSignals
from urr_devstack.supervisor import Outcome, ServicePrinter, run_services, wait_for_signal

#: Issuer and audience per token kind (the brief's conventions). Set explicitly for every
#: block: a partly-set nested block would otherwise fall back to the generic defaults.
TOKEN_NAMES = {
    "access": ("urr-auth", "urr"),
    "entry": ("urr-queue", "urr-entry"),
    "vwr": ("urr-vwr", "urr-vwr"),
}
READY_BANNER = "urr-devstack: ready"
#: A setup command (seeding) longer than this is reported and left behind.
SETUP_TASK_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def admin_password(self) -> Path:
        return self.root / "admin-password"

    @property
    def queue_ticket_secret(self) -> Path:
        """The ticket service's credential at the queue's internal listener."""
        return self.root / "secrets" / "queue-ticket"

    @property
    def check_api_secret(self) -> Path:
        """The load tests' credential at the gateway's rate-limit check API."""
        return self.root / "secrets" / "gateway-check-loadtest"

    @property
    def procfile(self) -> Path:
        return self.root / "Procfile"

    @property
    def env_file(self) -> Path:
        return self.root / "devstack.env"

    @property
    def runfile(self) -> Path:
        return self.root / RUNFILE_NAME


async def provision(
    settings: DevstackSettings, infra: Infra, say: Callable[[str], None] = print
) -> aws.ProvisionedAws:
    """The database, topics, queues and tables; each step is a no-op when already done."""
    if await postgres.ensure_database(infra.postgres_admin_dsn, settings.postgres_database):
        say(f"created database {settings.postgres_database}")
    await postgres.set_synchronous_commit(
        infra.postgres_admin_dsn, settings.postgres_database, settings.postgres_synchronous_commit
    )
    created = await kafka_topics.ensure_topics(
        infra.kafka_bootstrap, kafka_topics.TOPICS, settings.kafka_topics
    )
    if created:
        say(f"created topics {', '.join(created)}")
    # A broker we reused may hold topics made another way: say so rather than fail the stack.
    for wrong in await kafka_topics.verify_topics(
        infra.kafka_bootstrap, kafka_topics.TOPICS, settings.kafka_topics
    ):
        say(f"warning: topic layout differs from settings: {wrong}")
    endpoint = aws.AwsEndpoint(
        infra.moto_url,
        settings.aws_region,
        settings.aws_access_key_id,
        settings.aws_secret_access_key,
        dynamodb_url=infra.dynalite_url,
    )
    provisioned = await aws.provision(endpoint)
    say("SQS queues and DynamoDB tables are in place")
    return provisioned


def common_env(
    settings: DevstackSettings,
    infra: Infra,
    keys: Mapping[str, LocalKey],
    admin_password: str,
    ports: Mapping[str, int | None],
) -> dict[str, str]:
    """The environment every service gets (shared names from the brief's conventions).

    Upstreams trust the gateway's identity key (its public half; the private half goes to
    the gateway alone, ``services.py``). Service credentials are not here: each goes to its
    two sides only (``credential_env``)."""
    host = settings.host
    database_dsn = postgres.dsn(
        host, settings.ports.postgres, settings.postgres_user, settings.postgres_database
    )
    env = {
        "URR_ENVIRONMENT": "local",
        "URR_LOG__FORMAT": settings.service_log_format,
        "URR_REDIS__URL": infra.redis_url,
        "URR_POSTGRES__DSN": database_dsn,
        # The queue's operator console counts seats held and sold in the booking database.
        "URR_CONSOLE__SEATS_DSN": database_dsn,
        "URR_KAFKA__BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "URR_AWS__ENDPOINT_URL": infra.moto_url,
        "URR_AWS__REGION": settings.aws_region,
        "URR_AWS__ACCESS_KEY_ID": settings.aws_access_key_id,
        "URR_AWS__SECRET_ACCESS_KEY": settings.aws_secret_access_key,
        "URR_AWS__DYNAMODB_ENDPOINT_URL": infra.dynamodb_url,
        # A boto3 client built without our settings still goes to moto, never to real AWS
        # (and its DynamoDB to the stack's DynamoDB, botocore's service-specific variable).
        "AWS_ENDPOINT_URL": infra.moto_url,
        "AWS_ENDPOINT_URL_DYNAMODB": infra.dynamodb_url,
        "AWS_ACCESS_KEY_ID": settings.aws_access_key_id,
        "AWS_SECRET_ACCESS_KEY": settings.aws_secret_access_key,
        "AWS_DEFAULT_REGION": settings.aws_region,
        "URR_BOOTSTRAP_ADMIN_EMAIL": settings.admin_email,
        "URR_BOOTSTRAP_ADMIN_PASSWORD": admin_password,
        # Lines reach honcho (and the log files) as they are written.
        "PYTHONUNBUFFERED": "1",
    }
    for kind, (issuer, audience) in TOKEN_NAMES.items():
        key = keys[kind]
        signer, trust = f"URR_{kind.upper()}_TOKENS__", f"URR_{kind.upper()}_TRUST__"
        env[signer + "PRIVATE_KEY_FILE"] = str(key.private_file)
        env[signer + "KEY_ID"] = key.key_id
        env[signer + "ISSUER"] = issuer
        env[signer + "AUDIENCE"] = audience
        env[trust + "ISSUER"] = issuer
        env[trust + "AUDIENCE"] = audience
    env["URR_ACCESS_TRUST__JWKS_URL"] = _jwks_url(host, ports.get("auth"), 3005)
    env["URR_ENTRY_TRUST__JWKS_URL"] = _jwks_url(host, ports.get("queue"), 3007)
    env["URR_VWR_TRUST__PUBLIC_KEY_FILES"] = f'["{keys["vwr"].public_file}"]'
    env["URR_IDENTITY__PUBLIC_KEY_FILES"] = f'["{keys["identity"].public_file}"]'
    return env


#: Who holds the ticket service's credential at the queue: the ticket processes and the seed.
TICKET_CREDENTIAL_HOLDERS = ("ticket", "ticket-outcomes", "seed-demo")


def credential_env(queue_ticket_secret: str, check_api_secret: str) -> dict[str, dict[str, str]]:
    """Extra environment by service (or setup task) name: each internal listener's caller
    list, and each caller's credential, given to those two sides and nobody else."""
    ticket = {
        "URR_QUEUE_CREDENTIAL__NAME": "ticket",
        "URR_QUEUE_CREDENTIAL__SECRET": queue_ticket_secret,
    }
    return {
        "queue": {"URR_INTERNAL__CALLERS": json.dumps({"ticket": queue_ticket_secret})},
        # The load tests' ratelimit_check scenario reads its secret from the state folder.
        "gateway": {"URR_INTERNAL__CALLERS": json.dumps({"loadtest": check_api_secret})},
        **{name: dict(ticket) for name in TICKET_CREDENTIAL_HOLDERS},
    }


def _jwks_url(host: str, port: int | None, default_port: int) -> str:
    return f"http://{host}:{port or default_port}/.well-known/jwks.json"


def urls(settings: DevstackSettings, infra: Infra, planned: list[PlannedService]) -> dict[str, str]:
    """What the banner prints: the entry points first, then each service, then the servers."""
    shown: dict[str, str] = {}
    by_name = {service.name: service for service in planned}
    for name in ("vwr-edge", "gateway"):
        if name in by_name and by_name[name].port is not None:
            shown[name] = f"http://{settings.host}:{by_name[name].port}"
    for service in planned:
        if service.port is not None and service.name not in shown:
            shown[service.name] = f"http://{settings.host}:{service.port}"
    shown["moto"] = infra.moto_url
    if infra.dynalite_url:
        shown["dynamodb (dynalite)"] = infra.dynalite_url
    shown["kafka"] = infra.kafka_bootstrap
    shown["redis"] = infra.redis_url
    shown["postgres"] = postgres.dsn(
        settings.host, settings.ports.postgres, settings.postgres_user, settings.postgres_database
    )
    return shown


def banner(
    shown: Mapping[str, str],
    admin_email: str,
    admin_password: str,
    paths: StatePaths,
    reused: Iterable[str] = (),
) -> str:
    """The lines printed once everything is ready."""
    width = max(len(name) for name in shown)
    was_running = set(reused)
    lines = [READY_BANNER]
    for name, url in shown.items():
        note = "  (was already running)" if name in was_running else ""
        lines.append(f"  {name.ljust(width)}  {url}{note}")
    lines += [
        f"  admin login: {admin_email} / {admin_password}",
        f"  logs: {paths.logs}    stop: Ctrl-C (or urr-devstack down)",
    ]
    return "\n".join(lines)


def up(
    settings: DevstackSettings, *, no_services: bool = False, out: Callable[[str], None] = print
) -> int:
    """Run the stack until asked to stop; the exit code of ``urr-devstack up``."""
    paths = StatePaths(settings.resolved_state_dir())
    repo_root = find_repo_root(Path.cwd())
    paths.root.mkdir(parents=True, exist_ok=True)
    existing = RunState.load(paths.runfile)
    if existing is not None and existing.pid != os.getpid() and _pid_alive(existing.pid):
        out(f"urr-devstack: already running (pid {existing.pid}); `urr-devstack down` stops it")
        return 1
    # Validated before anything starts: a bad table or port clash costs nothing.
    ports = resolve_ports(SERVICES, settings.service_ports, reserved=settings.ports.model_dump())
    busy = [] if no_services else busy_service_ports(settings, ports, SERVICES)
    if busy:
        raise InfraError(
            f"ports already in use: {', '.join(busy)}. Stop what listens there, move the "
            "service (URR_DEVSTACK__SERVICE_PORTS__<NAME>) or leave it out (--skip NAME)"
        )
    # The user's own admin (both variables) wins; the generated one only when neither is set.
    admin = chosen_admin(os.environ)
    if admin is not None:
        settings = settings.model_copy(update={"admin_email": admin[0]})
    # From here to the end the handler only records; the steps below check it between them
    # (and inside their waits), and the stop waits check it for a second signal.
    signals = StopSignals().install()
    state = RunState(pid=os.getpid())
    state.save(paths.runfile)
    infra: Infra | None = None
    try:
        infra = start_infra(
            settings,
            paths.root,
            say=lambda line: out(f"urr-devstack: {line}"),
            cancelled=lambda: signals.requested,
            escalate=lambda: signals.escalated,
        )
        state.servers = [
            ProcessRecord(server.name, pid, _marker(server.name))
            for server in infra.started
            if (pid := server.pid) is not None
        ]
        state.save(paths.runfile)
        signals.checkpoint()
        provisioned = asyncio.run(
            provision(settings, infra, say=lambda line: out(f"urr-devstack: {line}"))
        )
        keys = ensure_signing_keys(paths.keys)
        admin_password = (
            admin[1] if admin is not None else ensure_admin_password(paths.admin_password)
        )
        signals.checkpoint()
        env = common_env(settings, infra, keys, admin_password, ports)
        credentials = credential_env(
            ensure_service_secret(paths.queue_ticket_secret),
            ensure_service_secret(paths.check_api_secret),
        )
        infra_values = {
            "redis_url": infra.redis_url,
            "postgres_dsn": env["URR_POSTGRES__DSN"],
            "kafka_bootstrap": infra.kafka_bootstrap,
            "aws_endpoint_url": infra.moto_url,
            "ticket_queue_url": provisioned.ticket_queue_url,
            "ticket_dlq_url": provisioned.ticket_dlq_url,
            "counters_table": aws.COUNTERS_TABLE,
            "positions_table": aws.POSITIONS_TABLE,
            "state_dir": str(paths.root),
        }
        planned, absent = plan_services(
            SERVICES,
            host=settings.host,
            ports=ports,
            infra=infra_values,
            skip=settings.skip_services,
        )
        tasks = plan_setup_tasks(
            SETUP_TASKS,
            host=settings.host,
            ports=ports,
            infra=infra_values,
            python=sys.executable,
        )
        planned = [
            replace(service, env={**service.env, **credentials.get(service.name, {})})
            for service in planned
        ]
        tasks = [
            replace(task, env={**task.env, **credentials.get(task.name, {})}) for task in tasks
        ]
        _write_procfile(paths, planned, env)
        if settings.monitoring.enabled:
            _start_monitoring(settings, paths, repo_root, infra, planned, state, out, signals)
        if absent:
            out(
                "urr-devstack: not installed yet, so not started: "
                + ", ".join(s.name for s in absent)
            )
        outcome = _run(
            settings,
            paths,
            repo_root,
            infra,
            planned,
            tasks,
            env,
            admin_password,
            state,
            no_services,
            out,
            signals,
        )
    except Stopping:
        outcome = Outcome(0, "stopped on request while starting")
    except Exception:
        # A step that was cut short by the stop (a server killed under it) fails its own way.
        if not signals.requested:
            raise
        outcome = Outcome(0, "stopped on request while starting")
    finally:
        # Signals keep being recorded: a second one makes the servers' stop a kill.
        if infra is not None:
            how = " (killing them: second stop signal)" if signals.escalated else ""
            out(f"urr-devstack: stopping the servers we started{how}")
            infra.stop(escalate=lambda: signals.escalated)
        paths.runfile.unlink(missing_ok=True)
        signals.restore()
    out(f"urr-devstack: {outcome.reason}")
    return outcome.exit_code


def _run(
    settings: DevstackSettings,
    paths: StatePaths,
    repo_root: Path,
    infra: Infra,
    planned: list[PlannedService],
    tasks: list[PlannedTask],
    env: dict[str, str],
    admin_password: str,
    state: RunState,
    no_services: bool,
    out: Callable[[str], None],
    signals: StopSignals,
) -> Outcome:
    shown = urls(settings, infra, [] if no_services else planned)
    reused = [server.name for server in infra.servers if not server.started]
    message = banner(shown, settings.admin_email, admin_password, paths, reused)

    def check_alive() -> str | None:
        dead = infra.dead_servers()
        if dead:
            names = ", ".join(f"{server.name} (log: {server.log_path})" for server in dead)
            return f"a server we started has stopped: {names}"
        return None

    def mark_ready(printer: ServicePrinter | None = None) -> None:
        say = printer.say if printer is not None else out
        if not no_services:
            for task in tasks:
                say(run_setup_task(task, env, repo_root))
        state.phase = "ready"
        state.urls = shown
        state.save(paths.runfile)
        for line in message.splitlines():
            if printer is not None:
                printer.say(line)
            else:
                out(line)

    if no_services or not planned:
        mark_ready()
        return wait_for_signal(signals, check_alive)

    def on_started(name: str, pid: int) -> None:
        module = next(service.module for service in planned if service.name == name)
        state.services.append(ProcessRecord(name, pid, module))
        state.save(paths.runfile)

    return run_services(
        planned,
        python=sys.executable,
        env=env,
        cwd=repo_root,
        log_dir=paths.logs,
        ready_timeout_s=settings.ready_timeout_s,
        on_ready=mark_ready,
        check_alive=check_alive,
        on_started=on_started,
        signals=signals,
        drain_timeout_s=settings.drain_timeout_s,
    )


def _start_monitoring(
    settings: DevstackSettings,
    paths: StatePaths,
    repo_root: Path,
    infra: Infra,
    planned: list[PlannedService],
    state: RunState,
    out: Callable[[str], None],
    signals: StopSignals,
) -> None:
    """Prometheus and Alertmanager on the planned services; stopped with the servers."""
    try:
        started = start_monitoring(
            repo_root,
            paths.root,
            settings.host,
            {service.name: service.port for service in planned},
            settings.monitoring,
            say=lambda line: out(f"urr-devstack: {line}"),
            cancelled=lambda: signals.requested,
            start_timeout_s=settings.server_start_timeout_s,
        )
    except MonitoringError as exc:
        raise InfraError(str(exc)) from exc
    infra.started.extend(started)
    state.servers += [
        ProcessRecord(server.name, pid, _marker(server.name))
        for server in started
        if (pid := server.pid) is not None
    ]
    state.save(paths.runfile)
    host = settings.host
    monitoring = settings.monitoring
    out(
        f"urr-devstack: alerts: prometheus http://{host}:{monitoring.prometheus_port}, "
        f"alertmanager http://{host}:{monitoring.alertmanager_port}"
    )


def run_setup_task(task: PlannedTask, env: Mapping[str, str], cwd: Path) -> str:
    """Run one setup command to the end; a line saying how it went (never raises)."""
    try:
        done = subprocess.run(  # noqa: S603 - argv built from our own table
            task.argv,
            env={**os.environ, **env, **task.env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=SETUP_TASK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"{task.name}: did not finish within {SETUP_TASK_TIMEOUT_S:.0f}s"
    output = (done.stdout + done.stderr).strip().splitlines()
    last = output[-1] if output else ""
    status = "done" if done.returncode == 0 else f"FAILED (exit {done.returncode})"
    return f"{task.name}: {status} {last}".rstrip()


def busy_service_ports(
    settings: DevstackSettings,
    ports: Mapping[str, int | None],
    table: Sequence[ServiceSpec] = SERVICES,
    runnable: Callable[[str], bool] = is_runnable,
) -> list[str]:
    """Services we would start whose port something already listens on (they would die)."""
    skipped = set(settings.skip_services)
    return [
        f"{name} ({settings.host}:{port})"
        for spec in table
        if spec.name not in skipped and runnable(spec.module)
        for name in spec.listeners()
        if (port := ports.get(name)) is not None and is_listening(settings.host, port)
    ]


def _write_procfile(
    paths: StatePaths, planned: list[PlannedService], env: Mapping[str, str]
) -> None:
    """The Procfile and .env honcho runs, kept for ``honcho -f .urr/Procfile -e ...`` by hand."""
    paths.procfile.write_text(render_procfile(planned, sys.executable))
    fd = os.open(paths.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_env_file(env))


def _marker(server_name: str) -> str:
    """A word of the server's command line that a recycled pid would not have."""
    markers = {"redis": "redis-server", "postgres": "postgres", "moto": "moto_server"}
    return markers.get(server_name, server_name)


def _pid_alive(pid: int) -> bool:
    line = cmdline(pid)
    return line is not None and "devstack" in line
