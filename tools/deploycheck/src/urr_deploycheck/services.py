"""The one table of what gets deployed: images, processes, their settings and their ports.

Everything else in this package (Dockerfiles, the NetworkPolicy and docker-compose checks,
Lambda packaging) reads these tables, so a renamed module or settings class is corrected here
once. Import paths of settings classes are strings, imported when a check needs them (this
table stays importable without the services); the tests check every entry against the real
module (the settings its entry point loads, its default port) and against the local stack's
table in ``tools/devstack``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Target(StrEnum):
    """Where a workload runs."""

    #: Every Kubernetes overlay (base).
    K8S = "k8s"
    #: Only the ``kind`` overlay (local stand-ins for managed AWS parts).
    KIND = "kind"
    #: docker-compose.
    COMPOSE = "compose"


@dataclass(frozen=True)
class Image:
    """One container image, built from ``services/<folder>/Dockerfile``."""

    folder: str
    #: Workspace member installed into the image (``uv sync --package``).
    package: str
    #: ``python -m`` target of the image's default command.
    module: str
    #: Port of the default command's HTTP listener (health, metrics), for ``EXPOSE`` and the
    #: image's ``HEALTHCHECK`` when ``URR_HTTP__PORT`` is not set.
    port: int
    #: Its request path compiled with mypyc in the build stage (``urr_common.native``).
    native: bool = False

    @property
    def name(self) -> str:
        return "urr/" + self.folder.replace("_", "-")


@dataclass(frozen=True)
class ExtraPort:
    """A second listener of a process, e.g. the gateway's internal rate-limit check API."""

    name: str
    port: int
    #: Variables that make it listen on every interface, set in every deployment.
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Workload:
    """One long-running process (a Deployment, a compose service)."""

    name: str
    image: Image
    module: str
    #: ``module:Class`` of every settings class the process builds from its environment; the
    #: endpoints it calls are read from these (see ``endpoints``).
    settings: tuple[str, ...]
    #: The HTTP listener: ``/health/*`` and the API (``/metrics`` has a listener of its own).
    port: int
    targets: frozenset[Target]
    extra_ports: tuple[ExtraPort, ...] = ()
    #: Blue-green through Argo Rollouts in prod.
    rollout: bool = False
    #: A canary through Argo Rollouts in prod (weighted by pods; no traffic router).
    canary: bool = False

    @property
    def command(self) -> tuple[str, ...]:
        return ("python", "-m", self.module)


@dataclass(frozen=True)
class Infra:
    """A third-party server the suite needs (a real image locally, a managed service in AWS)."""

    name: str
    image: str
    port: int
    #: Which local runs include it.
    targets: frozenset[Target]
    #: Calls it makes itself (only provisioning jobs make any): ``host:port``.
    calls: tuple[str, ...] = ()


# Images: one per service folder. The worker and VWR images carry several processes.
AUTH_IMAGE = Image("auth", "urr-auth", "urr_auth", 3005)
GATEWAY_IMAGE = Image("gateway", "urr-gateway", "urr_gateway", 3001, native=True)
QUEUE_IMAGE = Image("queue", "urr-queue", "urr_queue", 3007)
TICKET_IMAGE = Image("ticket", "urr-ticket", "urr_ticket", 3002)
TICKET_WORKER_IMAGE = Image("ticket_worker", "urr-ticket-worker", "urr_ticket_worker.relay", 3021)
VWR_IMAGE = Image("vwr_lambda", "urr-vwr-lambda", "urr_vwr_lambda.local.apigw", 3010)
ADMISSION_LOG_IMAGE = Image("admission_log", "urr-admission-log", "urr_admission_log", 3030)
RATELIMIT_ADMIN_IMAGE = Image("ratelimit_admin", "urr-ratelimit-admin", "urr_ratelimit_admin", 3040)

IMAGES: tuple[Image, ...] = (
    AUTH_IMAGE,
    GATEWAY_IMAGE,
    QUEUE_IMAGE,
    TICKET_IMAGE,
    TICKET_WORKER_IMAGE,
    VWR_IMAGE,
    ADMISSION_LOG_IMAGE,
    RATELIMIT_ADMIN_IMAGE,
)

_EVERYWHERE = frozenset({Target.K8S, Target.COMPOSE})
_LOCAL = frozenset({Target.KIND, Target.COMPOSE})
_COMPOSE = frozenset({Target.COMPOSE})

#: The gateway's rate-limit check API (``POST /internal/v1/ratelimit/check``).
GATEWAY_INTERNAL = ExtraPort(
    "internal", 3011, env=(("URR_INTERNAL__HOST", "0.0.0.0"), ("URR_INTERNAL__PORT", "3011"))
)
#: The queue's internal listener: ``/internal/v1/queue/...`` for the ticket service's
#: credential only (``URR_INTERNAL__CALLERS``), never on its public port.
QUEUE_INTERNAL = ExtraPort(
    "internal", 5007, env=(("URR_INTERNAL__HOST", "0.0.0.0"), ("URR_INTERNAL__PORT", "5007"))
)

# Module names of the booking back end's processes and the VWR stand-ins come from their
# packages' console scripts; correct them here if they move.
WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "gateway",
        GATEWAY_IMAGE,
        "urr_gateway",
        ("urr_gateway.settings:GatewaySettings",),
        3001,
        _EVERYWHERE,
        extra_ports=(GATEWAY_INTERNAL,),
        rollout=True,
    ),
    Workload(
        "auth", AUTH_IMAGE, "urr_auth", ("urr_auth.settings:AuthSettings",), 3005, _EVERYWHERE
    ),
    Workload(
        "queue",
        QUEUE_IMAGE,
        "urr_queue",
        ("urr_queue.settings:QueueSettings",),
        3007,
        _EVERYWHERE,
        extra_ports=(QUEUE_INTERNAL,),
        rollout=True,
    ),
    Workload(
        "ticket",
        TICKET_IMAGE,
        "urr_ticket",
        ("urr_ticket.settings:TicketSettings",),
        3002,
        _EVERYWHERE,
        rollout=True,
    ),
    Workload(
        "ticket-outcomes",
        TICKET_IMAGE,
        "urr_ticket.outcomes",
        ("urr_ticket.settings:OutcomeSettings",),
        3024,
        _EVERYWHERE,
    ),
    Workload(
        "ticket-relay",
        TICKET_WORKER_IMAGE,
        "urr_ticket_worker.relay",
        ("urr_ticket_worker.settings:RelayProcessSettings",),
        3021,
        _EVERYWHERE,
    ),
    Workload(
        "ticket-payment",
        TICKET_WORKER_IMAGE,
        "urr_ticket_worker.payment",
        ("urr_ticket_worker.settings:PaymentProcessSettings",),
        3022,
        _EVERYWHERE,
    ),
    Workload(
        "ticket-stats",
        TICKET_WORKER_IMAGE,
        "urr_ticket_worker.stats",
        ("urr_ticket_worker.settings:StatsProcessSettings",),
        3023,
        _EVERYWHERE,
    ),
    # The DLQ depth and the Kafka consumer lag: in AWS no process of ours would report them.
    Workload(
        "ticket-exporter",
        TICKET_WORKER_IMAGE,
        "urr_ticket_worker.exporter",
        ("urr_ticket_worker.exporter:ExporterSettings",),
        3025,
        _EVERYWHERE,
    ),
    # In AWS the booking worker is a Lambda on the SQS FIFO queue; locally a poller feeds the
    # same handler.
    Workload(
        "ticket-poller",
        TICKET_WORKER_IMAGE,
        "urr_ticket_worker.local.poller",
        ("urr_ticket_worker.settings:PollerSettings",),
        3020,
        _LOCAL,
    ),
    # The public admission log (issue 19): /v1/log/* through the gateway.
    Workload(
        "admission-log",
        ADMISSION_LOG_IMAGE,
        "urr_admission_log",
        ("urr_admission_log.settings:AdmissionLogSettings",),
        3030,
        _EVERYWHERE,
        canary=True,
    ),
    # The rate-limit Admin API (issue 18): /api/v1/admin/ratelimit/* through the gateway.
    Workload(
        "ratelimit-admin",
        RATELIMIT_ADMIN_IMAGE,
        "urr_ratelimit_admin",
        ("urr_ratelimit_admin.settings:RatelimitAdminSettings",),
        3040,
        _EVERYWHERE,
    ),
    # Its usage-snapshot scheduler: hourly rows from the limiters' Redis counters.
    Workload(
        "ratelimit-usage",
        RATELIMIT_ADMIN_IMAGE,
        "urr_ratelimit_admin.snapshots",
        ("urr_ratelimit_admin.settings:RatelimitSnapshotSettings",),
        3041,
        _EVERYWHERE,
    ),
    # Tier 1 is API Gateway + Lambda + DynamoDB in AWS (SAM template); these stand in locally.
    Workload(
        "vwr-apigw",
        VWR_IMAGE,
        "urr_vwr_lambda.local.apigw",
        ("urr_vwr_lambda.settings:VwrSettings",),
        3010,
        _COMPOSE,
    ),
    Workload(
        "vwr-edge",
        VWR_IMAGE,
        "urr_vwr_lambda.local.edge",
        ("urr_vwr_lambda.settings:EdgeEmulatorSettings",),
        8000,
        _COMPOSE,
    ),
    Workload(
        "vwr-scheduler",
        VWR_IMAGE,
        "urr_vwr_lambda.local.scheduler",
        # The scheduler invokes the counter advancer in-process: it reads both. Its health
        # listener moves to 3012 (its default 3011 is the gateway's internal check listener,
        # and both run on one host in compose and the devstack): URR_HTTP__PORT says so.
        ("urr_vwr_lambda.settings:SchedulerSettings", "urr_vwr_lambda.settings:VwrSettings"),
        3012,
        _COMPOSE,
    ),
)


INFRA: tuple[Infra, ...] = (
    Infra("redis", "redis:7.4-alpine", 6379, _LOCAL),
    Infra("postgres", "postgres:16-alpine", 5432, _LOCAL),
    Infra("kafka", "apache/kafka:3.9.1", 9092, _LOCAL),
    Infra("moto", "motoserver/moto:5.1.18", 5000, _LOCAL),
    # Provisioning one-shots (``k8s/components/provision/scripts``): topics; queues and tables.
    Infra("provision-kafka", "apache/kafka:3.9.1", 0, _LOCAL, calls=("kafka:9092",)),
    Infra("provision-aws", "amazon/aws-cli:2.31.30", 0, _LOCAL, calls=("moto:5000",)),
)


@dataclass(frozen=True)
class ProvisioningJob:
    """A one-shot of the suite's own code that the managed overlays run before the services
    (a Job, no listener): its calls come from its settings, like a workload's."""

    name: str
    image: Image
    module: str
    settings: tuple[str, ...]


#: ``k8s/components/kafka-topics``: topics on MSK with the environment's layout (prod, staging).
JOBS: tuple[ProvisioningJob, ...] = (
    ProvisioningJob(
        "kafka-topics",
        QUEUE_IMAGE,
        "urr_common.kafka_topics",
        ("urr_common.kafka_topics:TopicProvisioningSettings",),
    ),
)


#: Kafka topics, SQS queues and DynamoDB tables the provisioning scripts create.
KAFKA_TOPICS = (
    "payment-events",
    "reservation-events",
    "transfer-events",
    "membership-events",
    "queue-events",
)
SQS_QUEUES = ("ticket-events.fifo", "ticket-events-dlq.fifo")
#: DynamoDB tables of Tier 1, by DESIGN.md's names (the VWR processes get them through
#: ``URR_TABLES__COUNTERS`` / ``URR_TABLES__POSITIONS``, so their code defaults do not matter).
DYNAMODB_TABLES = ("counters", "positions")


@dataclass(frozen=True)
class LambdaFunction:
    """One AWS Lambda function packaged from a workspace member."""

    name: str
    package: str
    #: ``module.function`` as the SAM template's ``Handler``.
    handler: str
    #: Zip size AWS accepts for direct upload (Lambda@Edge viewer-request: 1 MB).
    max_zip_bytes: int = 50 * 1024 * 1024

    @property
    def handler_module(self) -> str:
        return self.handler.rsplit(".", 1)[0]


# Handlers as the SAM templates name them (services/vwr_lambda/template.yaml: the API function
# serves assign/check/status and admin). The edge verifier is not here: its bundle also carries
# the per-deployment edge_location.json and must fit Lambda@Edge's 1 MB, so the VWR package
# builds it (build/edge).
LAMBDA_FUNCTIONS: tuple[LambdaFunction, ...] = (
    LambdaFunction("vwr-api", "urr-vwr-lambda", "urr_vwr_lambda.api.handler"),
    LambdaFunction("vwr-advancer", "urr-vwr-lambda", "urr_vwr_lambda.advancer.handler"),
    LambdaFunction(
        "ticket-worker", "urr-ticket-worker", "urr_ticket_worker.handler.lambda_handler"
    ),
)


@dataclass(frozen=True)
class Network:
    """Addresses outside the cluster an overlay's pods may reach, by the host names its
    configuration uses (private Route 53 names for the managed services)."""

    cidrs: dict[str, str] = field(default_factory=dict)


#: Stands for "the AWS APIs at their default endpoints" (``URR_AWS__ENDPOINT_URL`` unset):
#: reached through the VPC's interface endpoints.
AWS_API_HOST = "aws-api"

# Subnets of seed 004 §1.2 (prod VPC 10.0.0.0/16; staging mirrors it in 10.1.0.0/16).
NETWORKS: dict[str, Network] = {
    "staging": Network(
        {
            "urr-staging.proxy-c0x1y2z3a4b5.ap-northeast-2.rds.amazonaws.com": "10.1.20.0/23",
            "master.urr-staging.x1y2z3.apn2.cache.amazonaws.com": "10.1.30.0/23",
            "b-1.urrstaging.x1y2z3.c2.kafka.ap-northeast-2.amazonaws.com": "10.1.40.0/23",
            "b-2.urrstaging.x1y2z3.c2.kafka.ap-northeast-2.amazonaws.com": "10.1.40.0/23",
            AWS_API_HOST: "10.1.10.0/23",
        }
    ),
    "prod": Network(
        {
            "urr-prod.proxy-c0x1y2z3a4b5.ap-northeast-2.rds.amazonaws.com": "10.0.20.0/23",
            "master.urr-prod.x1y2z3.apn2.cache.amazonaws.com": "10.0.30.0/23",
            "b-1.urrprod.x1y2z3.c2.kafka.ap-northeast-2.amazonaws.com": "10.0.40.0/23",
            "b-2.urrprod.x1y2z3.c2.kafka.ap-northeast-2.amazonaws.com": "10.0.40.0/23",
            AWS_API_HOST: "10.0.10.0/23",
        }
    ),
}

#: Every pod resolves names through the cluster DNS.
DNS_NAMESPACE = "kube-system"
DNS_POD_LABELS = {"k8s-app": "kube-dns"}
#: Prometheus (kube-prometheus-stack) scrapes every pod's HTTP port from this namespace.
MONITORING_NAMESPACE = "monitoring"
#: The only workload reachable from outside the namespace (the ALB), on its HTTP port.
PUBLIC_WORKLOADS = ("gateway",)

OVERLAYS = ("kind", "staging", "prod")


def workload(name: str) -> Workload:
    for item in WORKLOADS:
        if item.name == name:
            return item
    raise KeyError(name)


def workloads_for(target: Target) -> tuple[Workload, ...]:
    return tuple(item for item in WORKLOADS if target in item.targets)


def infra_for(target: Target) -> tuple[Infra, ...]:
    return tuple(item for item in INFRA if target in item.targets)
