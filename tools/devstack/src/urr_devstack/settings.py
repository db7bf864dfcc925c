"""What the local stack is configured by: ``URR_DEVSTACK__*`` environment variables.

Every address the stack uses can be moved, so two stacks (or the end-to-end test and a
developer's ``make up``) can run side by side on one machine:

- ``URR_DEVSTACK__PORTS__REDIS`` / ``__POSTGRES`` / ``__KAFKA`` / ``__MOTO``: the servers.
- ``URR_DEVSTACK__SERVICE_PORTS__<NAME>`` (e.g. ``__AUTH=4005``): a service's HTTP port.
- ``URR_DEVSTACK__STATE_DIR``: logs, PostgreSQL data, keys (default ``<repo>/.urr``).
- ``URR_DEVSTACK__MONITORING__*``: Prometheus and Alertmanager (``monitoring.py``), off by
  default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from urr_common.kafka_topics import TopicLayout

Port = int


class ServerPorts(BaseModel):
    """Where each server listens (and where an already-running one is looked for)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    redis: Port = Field(default=6379, ge=1, le=65535)
    postgres: Port = Field(default=5432, ge=1, le=65535)
    kafka: Port = Field(default=9092, ge=1, le=65535)
    moto: Port = Field(default=5000, ge=1, le=65535)
    #: dynalite, DynamoDB's stand-in unless ``URR_DEVSTACK__DYNAMODB=moto``.
    dynalite: Port = Field(default=4567, ge=1, le=65535)


_PROM_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


class MonitoringSettings(BaseModel):
    """Prometheus with the Kubernetes alert rules and Alertmanager with its route tree, on the
    stack's services (``URR_DEVSTACK__MONITORING__ENABLED=true``, or ``make up MONITORING=1``)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    prometheus_port: Port = Field(default=9090, ge=1, le=65535)
    alertmanager_port: Port = Field(default=9093, ge=1, le=65535)
    scrape_interval_s: float = Field(default=5.0, ge=0.1, le=300.0)
    evaluation_interval_s: float = Field(default=5.0, ge=0.1, le=300.0)
    #: Replaces every alert's ``for:`` (e.g. ``0s``: fire at the first evaluation); the
    #: expressions are never changed. None keeps the Kubernetes values.
    rule_for: str | None = None
    #: Alertmanager's wait before the first notification of a group (and between updates);
    #: None keeps the Kubernetes route's.
    group_wait_s: float | None = Field(default=None, gt=0.0, le=600.0)
    #: Where every receiver posts locally (e-mail and Slack need secrets); None: nowhere.
    webhook_url: str | None = None

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.rule_for is not None and not _PROM_DURATION.fullmatch(self.rule_for):
            raise ValueError(f"rule_for {self.rule_for!r} is no Prometheus duration (e.g. 0s, 1m)")
        if self.webhook_url is not None and not self.webhook_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError("webhook_url must be an http(s) URL")
        if self.prometheus_port == self.alertmanager_port:
            raise ValueError("prometheus_port and alertmanager_port must differ")
        return self


class DevstackSettings(BaseSettings):
    """The local stack's configuration, validated once when a command starts."""

    model_config = SettingsConfigDict(
        env_prefix="URR_DEVSTACK__",
        env_nested_delimiter="__",
        # A misspelt URR_DEVSTACK__ variable is an error, not silently ignored.
        extra="forbid",
        frozen=True,
    )

    #: Loopback address every server and service of the stack binds to.
    host: str = "127.0.0.1"
    #: Logs, PostgreSQL data, signing keys, the admin password; default ``<repo>/.urr``.
    state_dir: Path | None = None
    ports: ServerPorts = Field(default_factory=ServerPorts)
    #: Per-service HTTP port overrides, by service name (``{"auth": 4005}``).
    service_ports: dict[str, Port] = Field(default_factory=dict)
    #: Services not to start (e.g. one you run yourself in a debugger).
    skip_services: list[str] = Field(default_factory=list)

    postgres_user: str = "postgres"
    postgres_database: str = "urr"
    #: ``synchronous_commit`` of the stack's database. ``off`` by default: a commit returns
    #: before its WAL reaches the disk (a crash of the machine loses the last ~0.6 s of
    #: commits, never consistency). On a shared machine's disk each fsync waited tens of
    #: milliseconds, and in a flash crowd the booking API's commits queued behind the
    #: consumers' (docs/performance.md, issue 22 "hops"). The local Kafka keeps its records
    #: in memory anyway; ``on`` measures the disk too.
    postgres_synchronous_commit: Literal["on", "off"] = "off"
    #: Folder holding ``initdb`` and ``postgres``; default the newest /usr/lib/postgresql/*/bin.
    postgres_bin_dir: Path | None = None
    #: The OS user a private PostgreSQL runs as when we are root (it refuses to run as root).
    postgres_os_user: str = "postgres"

    aws_region: str = "us-east-1"
    #: moto accepts any credentials; these only have to be present.
    aws_access_key_id: str = "urr-local"
    aws_secret_access_key: str = "urr-local"  # noqa: S105 - moto takes any; nothing secret

    #: DynamoDB's stand-in: ``dynalite`` (``make dynalite``; 4-7x less CPU per call than moto
    #: and item writes serialised as in DynamoDB, docs/performance.md) or ``moto`` (where
    #: Node.js is missing; ``make up`` picks it then). SQS, S3 and Secrets Manager stay on moto.
    dynamodb: Literal["dynalite", "moto"] = "dynalite"

    #: ``memory`` keeps Kafka records in the broker; ``s3`` keeps them in moto's S3 across
    #: broker restarts (not across ``up`` runs: moto forgets too), at a price: Tansu lists its
    #: S3 objects on fetches, and under a flash crowd that took most of moto's time away from
    #: DynamoDB and SQS (see tools/devstack/README.md).
    kafka_storage: Literal["s3", "memory"] = "memory"
    #: Partitions, replication factor, min in-sync replicas and retention of every topic
    #: (``URR_DEVSTACK__KAFKA_TOPICS__PARTITIONS`` ...); one local broker holds RF 1 only.
    kafka_topics: TopicLayout = Field(default_factory=TopicLayout)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    #: How long a server we start may take to listen.
    server_start_timeout_s: float = Field(default=30.0, gt=0.0, le=600.0)
    #: How long all services together may take to answer their readiness check.
    ready_timeout_s: float = Field(default=90.0, gt=0.0, le=1800.0)
    #: How long the services may take to stop after SIGTERM before they are killed (a second
    #: Ctrl-C kills at once).
    drain_timeout_s: float = Field(default=5.0, gt=0.0, le=120.0)
    #: Log format handed to the services (``console`` reads better in a terminal).
    service_log_format: Literal["console", "json"] = "console"

    admin_email: str = "admin@urr.local"

    @model_validator(mode="after")
    def _ports_distinct(self) -> Self:
        used: dict[int, str] = {}
        named = [(f"ports.{name}", port) for name, port in self.ports.model_dump().items()]
        named += [(f"service_ports.{name}", port) for name, port in self.service_ports.items()]
        if self.monitoring.enabled:
            named += [
                ("monitoring.prometheus_port", self.monitoring.prometheus_port),
                ("monitoring.alertmanager_port", self.monitoring.alertmanager_port),
            ]
        for name, port in named:
            if not 1 <= port <= 65535:
                raise ValueError(f"{name}: port {port} is outside 1-65535")
            if port in used:
                raise ValueError(f"{name} and {used[port]} both use port {port}")
            used[port] = name
        return self

    def resolved_state_dir(self, cwd: Path | None = None) -> Path:
        """The state folder as an absolute path (``<repo>/.urr`` unless configured)."""
        if self.state_dir is not None:
            return self.state_dir.expanduser().resolve()
        return find_repo_root(cwd or Path.cwd()) / ".urr"


def find_repo_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding the workspace's ``uv.lock``."""
    start = start.resolve()
    for folder in (start, *start.parents):
        if (folder / "uv.lock").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    return start
