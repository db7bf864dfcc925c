"""Every metric the alerts, the analysis gates and the dashboard use, listed once.

Names are the exposition names Prometheus stores (a counter ``x`` is scraped as ``x_total``, a
histogram ``x`` as ``x_bucket``/``x_sum``/``x_count``). Every metric but Prometheus's own
(``builtin``) is ``exported``: the tests find its ``Counter``/``Gauge``/``Histogram`` in the
owner's source with these labels, and a test of the running stack
(``tools/devstack/tests/test_devstack_monitoring.py``) scrapes every process and fails when an
alert or panel names a series none of them serves.

``owner`` is the folder of the code that exports (or should export) it: ``libs/common`` or
``services/<owner>``.

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
    status: Literal["exported", "builtin"]
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
        "common",
        "exported",
        "HTTP answers; status is the class (2xx, 4xx, 5xx)",
    ),
    Metric(
        "urr_http_request_duration_seconds",
        "histogram",
        ("method", "route"),
        "common",
        "exported",
        "Time from request to response",
    ),
    Metric(
        "urr_http_requests_in_flight",
        "gauge",
        (),
        "common",
        "exported",
        "Requests being handled now",
    ),
    # Gateway rate limiter (urr_gateway.ratelimit.metrics).
    Metric(
        "urr_ratelimit_decisions_total",
        "counter",
        ("category", "result", "source"),
        "gateway",
        "exported",
        "Decisions by category, result (allowed/blocked) and source (redis, deny_cache, local, "
        "open)",
    ),
    Metric(
        "urr_ratelimit_degraded_decisions_total",
        "counter",
        ("category", "policy"),
        "gateway",
        "exported",
        "Decisions made without Redis, by category and failure policy (local, open)",
    ),
    Metric(
        "urr_ratelimit_redis_errors_total",
        "counter",
        ("kind",),
        "gateway",
        "exported",
        "Failed Redis calls of the limiter (timeout, connection, other)",
    ),
    Metric(
        "urr_ratelimit_breaker_state",
        "gauge",
        (),
        "gateway",
        "exported",
        "Circuit breaker in front of Redis: 0 closed, 1 half-open, 2 open",
    ),
    Metric(
        "urr_ratelimit_decision_seconds",
        "histogram",
        ("source",),
        "gateway",
        "exported",
        "Time to decide",
    ),
    # Rate-limit usage snapshots (urr_ratelimit_admin.snapshots): the scheduler's lag, and
    # per tenant what the limiters counted in Redis.
    Metric(
        "urr_ratelimit_snapshot_lag_seconds",
        "gauge",
        (),
        "ratelimit_admin",
        "exported",
        "Time since the newest usage counted in Redis that PostgreSQL holds",
    ),
    Metric(
        "urr_ratelimit_snapshot_rounds_total",
        "counter",
        ("outcome",),
        "ratelimit_admin",
        "exported",
        "Snapshot rounds by outcome (ok, failed)",
    ),
    Metric(
        "urr_ratelimit_usage_requests_total",
        "counter",
        ("tenant", "result"),
        "ratelimit_admin",
        "exported",
        "Decisions by tenant and result (allowed, blocked, shadow_blocked), from the usage "
        "counters ('-': no tenant)",
    ),
    Metric(
        "urr_ratelimit_quota_used",
        "gauge",
        ("tenant",),
        "ratelimit_admin",
        "exported",
        "Requests counted against the tenant's quota this calendar month (UTC)",
    ),
    Metric(
        "urr_ratelimit_quota_limit",
        "gauge",
        ("tenant",),
        "ratelimit_admin",
        "exported",
        "The tenant's monthly quota",
    ),
    Metric(
        "urr_ratelimit_quota_soft_limit",
        "gauge",
        ("tenant",),
        "ratelimit_admin",
        "exported",
        "Quota use at which the tenant's soft alert fires (soft_alert_pct of the quota)",
    ),
    # Queue (Tier 2): counters of the service (urr_queue.metrics).
    Metric(
        "urr_queue_entries_total",
        "counter",
        ("outcome",),
        "queue",
        "exported",
        "Enter calls by outcome (entered, already_waiting, admitted_passthrough, closed ...)",
    ),
    Metric(
        "urr_queue_admitted_total",
        "counter",
        ("path",),
        "queue",
        "exported",
        "People admitted, by path (tick: from the line; passthrough: straight in)",
    ),
    Metric(
        "urr_queue_sessions_expired_total",
        "counter",
        (),
        "queue",
        "exported",
        "Admitted sessions that ran out (capacity freed)",
    ),
    Metric(
        "urr_queue_left_total",
        "counter",
        ("reason", "was"),
        "queue",
        "exported",
        "Places and sessions ended on request (reason leave/completed; was waiting/admitted)",
    ),
    Metric(
        "urr_queue_tick_errors_total",
        "counter",
        (),
        "queue",
        "exported",
        "Admission ticks that failed",
    ),
    Metric(
        "urr_queue_tick_seconds",
        "histogram",
        (),
        "queue",
        "exported",
        "Duration of one admission tick of one event",
    ),
    # Queue (Tier 2): the admission outbox (urr_queue.outbox, issue 19).
    Metric(
        "urr_queue_outbox_depth",
        "gauge",
        (),
        "queue",
        "exported",
        "Admission log records waiting in the events' Redis outboxes for Kafka",
    ),
    Metric(
        "urr_queue_outbox_oldest_age_seconds",
        "gauge",
        (),
        "queue",
        "exported",
        "Age of the oldest record waiting in an admission outbox (0: all relayed)",
    ),
    Metric(
        "urr_queue_outbox_full_ticks_total",
        "counter",
        (),
        "queue",
        "exported",
        "Ticks that admitted nobody because the event's outbox was at URR_OUTBOX__MAX_LEN",
    ),
    # Queue (Tier 2), per event: the live figures, refreshed from Redis (urr_queue.metrics).
    Metric("urr_queue_waiting", "gauge", ("event_id",), "queue", "exported", "People waiting"),
    Metric(
        "urr_queue_active_sessions",
        "gauge",
        ("event_id",),
        "queue",
        "exported",
        "Admitted sessions open now (a gauge: not the admissions counter)",
    ),
    Metric(
        "urr_queue_capacity",
        "gauge",
        ("event_id",),
        "queue",
        "exported",
        "Most admitted sessions at once",
    ),
    Metric(
        "urr_queue_admission_rate",
        "gauge",
        ("event_id",),
        "queue",
        "exported",
        "Admissions per second the line moves at (0 while paused)",
    ),
    Metric(
        "urr_queue_oldest_waiter_seconds",
        "gauge",
        ("event_id",),
        "queue",
        "exported",
        "Time the person at the front has waited",
    ),
    Metric(
        "urr_queue_eta_seconds",
        "gauge",
        ("event_id",),
        "queue",
        "exported",
        "Estimated wait of the last person in line",
    ),
    # Tier 1 (VWR): the Lambdas emit CloudWatch EMF (AdvancedLive, ServingCounter, NextPosition
    # ...); the local scheduler exports these as Prometheus metrics.
    Metric(
        "urr_vwr_advancer_runs_total",
        "counter",
        ("outcome",),
        "vwr_lambda",
        "exported",
        "Advancer invocations of the local scheduler, by outcome",
    ),
    Metric(
        "urr_vwr_serving_counter",
        "gauge",
        ("event_id",),
        "vwr_lambda",
        "exported",
        "Highest position let through",
    ),
    Metric(
        "urr_vwr_next_position",
        "gauge",
        ("event_id",),
        "vwr_lambda",
        "exported",
        "Positions handed out so far (the back of the line)",
    ),
    # Booking back end. In AWS the SQS worker is a Lambda (nothing to scrape: EMF namespace
    # URR/Worker); locally the poller runs the handler and serves its figures.
    Metric(
        "urr_ticket_poller_messages_total",
        "counter",
        ("outcome",),
        "ticket_worker",
        "exported",
        "SQS messages handed to the worker handler locally (deleted, failed)",
    ),
    Metric(
        "urr_worker_batches_total",
        "counter",
        ("result",),
        "ticket_worker",
        "exported",
        "SQS batches handled by the worker (ok, partial, failed)",
    ),
    Metric(
        "urr_worker_messages_total",
        "counter",
        ("result",),
        "ticket_worker",
        "exported",
        "Booking commands handled by the worker (applied, duplicate, rejected, failed)",
    ),
    Metric(
        "urr_worker_batch_seconds",
        "histogram",
        (),
        "ticket_worker",
        "exported",
        "Time to handle one SQS batch",
    ),
    Metric(
        "urr_worker_message_wait_seconds",
        "histogram",
        (),
        "ticket_worker",
        "exported",
        "Time a command waited on the queue before the worker got it",
    ),
    Metric(
        "urr_worker_dlq_messages",
        "gauge",
        (),
        "ticket_worker",
        "exported",
        "Messages in ticket-events-dlq.fifo (the ticket-exporter process polls SQS)",
    ),
    Metric(
        "urr_worker_queue_oldest_age_seconds",
        "gauge",
        (),
        "ticket_worker",
        "exported",
        "Age of the oldest message on ticket-events.fifo (CloudWatch in AWS, the poller locally)",
    ),
    Metric(
        "urr_worker_dlq_oldest_age_seconds",
        "gauge",
        (),
        "ticket_worker",
        "exported",
        "Age of the oldest dead letter (ticket-exporter looks without consuming)",
    ),
    # Transactional outbox (relay) and the Kafka consumers of the booking back end.
    Metric(
        "urr_outbox_unsent",
        "gauge",
        (),
        "ticket_worker",
        "exported",
        "Outbox rows not yet published",
    ),
    Metric(
        "urr_outbox_published_total",
        "counter",
        (),
        "ticket_worker",
        "exported",
        "Outbox rows published to Kafka",
    ),
    Metric(
        "urr_outbox_publish_failures_total",
        "counter",
        (),
        "ticket_worker",
        "exported",
        "Relay rounds stopped by a Kafka error",
    ),
    Metric(
        "urr_booking_consumer_records_total",
        "counter",
        ("consumer", "topic", "outcome"),
        "ticket_worker",
        "exported",
        "Kafka records seen by the booking consumers (applied, duplicate, rejected, malformed)",
    ),
    Metric(
        "urr_booking_consumer_retries_total",
        "counter",
        ("consumer",),
        "ticket_worker",
        "exported",
        "Times a consumer went back to an unhandled record after a dependency failed",
    ),
    # The admission log (issue 19, urr_admission_log.consumer): the alerts that it stopped
    # growing or signing, and its canary's gates.
    Metric(
        "urr_admission_log_records_total",
        "counter",
        ("outcome",),
        "admission_log",
        "exported",
        "queue-events records seen by the log (appended, duplicate, ignored, malformed)",
    ),
    Metric(
        "urr_admission_log_failures_total",
        "counter",
        ("loop",),
        "admission_log",
        "exported",
        "Consumer or signer rounds that failed (loop: consumer, signer)",
    ),
    Metric(
        "urr_admission_log_last_append_timestamp_seconds",
        "gauge",
        (),
        "admission_log",
        "exported",
        "When this log process last appended a leaf",
    ),
    Metric(
        "urr_admission_log_last_head_timestamp_seconds",
        "gauge",
        (),
        "admission_log",
        "exported",
        "When this log process last signed a tree head",
    ),
    Metric(
        "urr_kafka_consumer_lag",
        "gauge",
        ("group", "topic", "partition"),
        "ticket_worker",
        "exported",
        "Records between a group's committed offset and the partition's end (ticket-exporter)",
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
