"""Every metric the alerts, the analysis gates and the dashboard use, listed once.

Names are the exposition names Prometheus stores (a counter ``x`` is scraped as ``x_total``, a
histogram ``x`` as ``x_bucket``/``x_sum``/``x_count``). ``status`` says whether the owning
service already exports the metric under that name on this branch (``exported``) or whether the
name is this deployment's proposal for a metric still being written (``proposed``): at merge,
reconcile the proposed rows with the services' real registries and rename here (the tests then
point at every rule, query and panel that must follow).

Labels added at scrape time by the PodMonitor (``app``, ``pod``, ``namespace``,
``rollouts_pod_template_hash``) are valid on every series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]

#: Labels Prometheus or the PodMonitor put on every scraped series.
TARGET_LABELS = frozenset(
    {"app", "pod", "namespace", "job", "instance", "container", "rollouts_pod_template_hash"}
)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    labels: tuple[str, ...]
    owner: str
    status: Literal["exported", "proposed", "builtin"]
    help: str

    def series_names(self) -> tuple[str, ...]:
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


METRICS: tuple[Metric, ...] = (
    Metric("up", "gauge", (), "prometheus", "builtin", "1 when the last scrape of a pod worked"),
    # urr_common.metrics.HttpMetrics: every HTTP service.
    Metric(
        "urr_http_requests_total",
        "counter",
        ("method", "route", "status"),
        "urr_common",
        "exported",
        "HTTP answers; status is the class (2xx, 4xx, 5xx)",
    ),
    Metric(
        "urr_http_request_duration_seconds",
        "histogram",
        ("method", "route"),
        "urr_common",
        "exported",
        "Time from request to response",
    ),
    Metric(
        "urr_http_requests_in_flight",
        "gauge",
        (),
        "urr_common",
        "exported",
        "Requests being handled now",
    ),
    # Gateway rate limiter (branch gw-ratelimit, urr_gateway.ratelimit.metrics).
    Metric(
        "urr_ratelimit_decisions_total",
        "counter",
        ("category", "result", "source"),
        "gateway",
        "proposed",
        "Decisions by category, result (allowed/blocked) and source (redis, local, open...)",
    ),
    Metric(
        "urr_ratelimit_breaker_state",
        "gauge",
        (),
        "gateway",
        "proposed",
        "Circuit breaker in front of Redis: 0 closed, 1 half-open, 2 open",
    ),
    Metric(
        "urr_ratelimit_decision_seconds",
        "histogram",
        ("source",),
        "gateway",
        "proposed",
        "Time to decide",
    ),
    # Queue (Tier 2), per event.
    Metric("urr_queue_waiting", "gauge", ("event_id",), "queue", "proposed", "People waiting"),
    Metric(
        "urr_queue_active_sessions",
        "gauge",
        ("event_id",),
        "queue",
        "proposed",
        "Admitted sessions open now (a gauge: not the admissions counter)",
    ),
    Metric(
        "urr_queue_capacity",
        "gauge",
        ("event_id",),
        "queue",
        "proposed",
        "Most admitted sessions at once",
    ),
    Metric(
        "urr_queue_admitted_total",
        "counter",
        ("event_id",),
        "queue",
        "proposed",
        "People admitted (the queue branch counts it by `path`; `event_id` is needed here)",
    ),
    Metric(
        "urr_queue_eta_seconds",
        "gauge",
        ("event_id",),
        "queue",
        "proposed",
        "Estimated wait of the last person in line",
    ),
    Metric(
        "urr_queue_mode",
        "gauge",
        ("event_id", "mode"),
        "queue",
        "proposed",
        "1 for the event's current mode (queue, passthrough, paused, closed)",
    ),
    # Tier 1 (VWR): from the local API emulator, or a CloudWatch exporter of the Lambdas' EMF.
    Metric(
        "urr_vwr_serving_counter",
        "gauge",
        ("event_id",),
        "vwr",
        "proposed",
        "Highest position let through",
    ),
    Metric(
        "urr_vwr_next_position",
        "gauge",
        ("event_id",),
        "vwr",
        "proposed",
        "Next position to hand out",
    ),
    # Booking worker (SQS FIFO -> PostgreSQL) and its queues.
    Metric(
        "urr_worker_batches_total",
        "counter",
        ("result",),
        "ticket_worker",
        "proposed",
        "SQS batches handled (ok, partial, failed)",
    ),
    Metric(
        "urr_worker_messages_total",
        "counter",
        ("result",),
        "ticket_worker",
        "proposed",
        "Booking commands handled (ok, duplicate, failed)",
    ),
    Metric(
        "urr_worker_dlq_messages",
        "gauge",
        (),
        "ticket_worker",
        "proposed",
        "Messages in ticket-events-dlq.fifo",
    ),
    Metric(
        "urr_worker_queue_oldest_age_seconds",
        "gauge",
        (),
        "ticket_worker",
        "proposed",
        "Age of the oldest message on ticket-events.fifo",
    ),
    # Transactional outbox (relay) and Kafka consumers.
    Metric(
        "urr_outbox_unsent",
        "gauge",
        (),
        "ticket_worker",
        "proposed",
        "Outbox rows not yet published (the ticket branch's relay has this name)",
    ),
    Metric(
        "urr_outbox_oldest_age_seconds",
        "gauge",
        (),
        "ticket_worker",
        "proposed",
        "Age of the oldest unpublished event",
    ),
    Metric(
        "urr_kafka_consumer_lag",
        "gauge",
        ("group", "topic", "partition"),
        "ticket_worker",
        "proposed",
        "Records between a group's committed offset and the partition's end",
    ),
)


def by_series_name() -> dict[str, Metric]:
    """Every stored series name (``_bucket`` etc. included) -> its metric."""
    return {series: metric for metric in METRICS for series in metric.series_names()}


def markdown_table() -> str:
    """The catalogue as a Markdown table (docs/runbook.md embeds it)."""
    lines = ["| metric | type | labels | from | status |", "| --- | --- | --- | --- | --- |"]
    for metric in METRICS:
        labels = ", ".join(metric.labels) or "-"
        row = f"| `{metric.name}` | {metric.kind} | {labels} | {metric.owner} | {metric.status} |"
        lines.append(row)
    return "\n".join(lines)
