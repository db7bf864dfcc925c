"""What the booking worker reports per SQS batch: batches and messages by result, how long a
batch took and how long its messages had waited on the queue.

Where a process of ours runs the handler (the local poller, kind), these are Prometheus
metrics on that process's registry. In a Lambda nothing is scraped: the same figures leave as
CloudWatch EMF lines (powertools, namespace ``URR/Worker``), which the CloudWatch alarms of
``template.yaml`` and dashboards read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram

from urr_common.logs import get_logger

_LOG = get_logger(__name__)

BatchResult = Literal["ok", "partial", "failed"]
#: Queue waits from milliseconds (an idle queue) to the 5-minute visibility timeout and past
#: the 10-minute backlog alert.
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0)
_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def batch_result(size: int, failed: int) -> BatchResult:
    """A batch with no failure is ``ok``, with every message failed ``failed``, else
    ``partial`` (the event source retries only the reported ones)."""
    if failed <= 0:
        return "ok"
    return "failed" if failed >= size else "partial"


def queue_waits(records: Iterable[Mapping[str, object]], now_ms: int) -> list[float]:
    """Seconds each record spent on the queue (from its ``SentTimestamp`` attribute); records
    without a readable timestamp are left out rather than counted as zero."""
    waits = []
    for record in records:
        attributes = record.get("attributes")
        if not isinstance(attributes, Mapping):
            continue
        try:
            sent = int(str(attributes.get("SentTimestamp", "")))
        except ValueError:
            continue
        waits.append(max(0, now_ms - sent) / 1000)
    return waits


def oldest_age_s(messages: Sequence[Mapping[str, Any]], now_ms: int) -> float:
    """Seconds since the oldest ``SentTimestamp`` among received SQS ``messages`` (0 for
    none, and for a timestamp in the future)."""
    sent = []
    for message in messages:
        attributes = message.get("Attributes")
        if not isinstance(attributes, Mapping):
            continue
        try:
            sent.append(int(str(attributes.get("SentTimestamp", ""))))
        except ValueError:
            continue
    return max(0, now_ms - min(sent)) / 1000 if sent else 0.0


@dataclass(frozen=True)
class BatchReport:
    size: int
    results: Mapping[str, int]
    failed: int
    seconds: float
    waits: tuple[float, ...]

    @property
    def result(self) -> BatchResult:
        return batch_result(self.size, self.failed)


class WorkerMetrics:
    """The worker's Prometheus metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.batches = Counter(
            "urr_worker_batches",
            "SQS batches handled by the worker, by result (ok, partial, failed)",
            ["result"],
            registry=registry,
        )
        self.messages = Counter(
            "urr_worker_messages",
            "Booking commands handled by the worker, by result (applied, duplicate, rejected, "
            "failed)",
            ["result"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "urr_worker_batch_seconds",
            "Time to handle one SQS batch (the transaction and the outbox flush)",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "urr_worker_message_wait_seconds",
            "Time a booking command waited on ticket-events.fifo before the worker got it",
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        # Every result shows from the start: an alert on rate(...{result="failed"}) needs
        # the series before the first failure.
        for result in ("ok", "partial", "failed"):
            self.batches.labels(result)
        for result in ("applied", "duplicate", "rejected", "failed"):
            self.messages.labels(result)

    def record(self, report: BatchReport) -> None:
        self.batches.labels(report.result).inc()
        for result, count in report.results.items():
            self.messages.labels(result).inc(count)
        if report.failed:
            self.messages.labels("failed").inc(report.failed)
        self.batch_seconds.observe(report.seconds)
        for wait in report.waits:
            self.queue_wait.observe(wait)


def emit_emf(report: BatchReport) -> None:
    """The batch's figures as one CloudWatch EMF line (in a Lambda); never raises."""
    if os.environ.get("POWERTOOLS_METRICS_DISABLED", "").lower() in ("1", "true"):
        return
    try:
        from aws_lambda_powertools import Metrics
        from aws_lambda_powertools.metrics import MetricUnit

        metrics = Metrics(namespace="URR/Worker", service="ticket-worker")
        metrics.add_metric(name="Batches", unit=MetricUnit.Count, value=1)
        metrics.add_metric(
            name="BatchesFailed" if report.result == "failed" else "BatchesOk",
            unit=MetricUnit.Count,
            value=1,
        )
        metrics.add_metric(name="MessagesFailed", unit=MetricUnit.Count, value=report.failed)
        metrics.add_metric(
            name="MessagesApplied", unit=MetricUnit.Count, value=report.results.get("applied", 0)
        )
        metrics.add_metric(
            name="BatchMilliseconds", unit=MetricUnit.Milliseconds, value=report.seconds * 1000
        )
        if report.waits:
            metrics.add_metric(
                name="OldestWaitSeconds", unit=MetricUnit.Seconds, value=max(report.waits)
            )
        metrics.flush_metrics()
    except Exception as exc:  # figures are never worth a failed batch
        _LOG.warning("emf_failed", error=repr(exc))
