"""``python -m urr_ticket_worker.exporter``: metrics nothing else can export.

In AWS the booking worker is a Lambda and the queues are managed, so two things the alerts
need have no process of ours to report them: how many commands sit in the DLQ (and the
queue), and how far each Kafka consumer group lags behind its topics. This process polls
both every ``poll_s`` and serves them on its metrics listener:

- ``urr_worker_dlq_messages`` / ``urr_worker_queue_messages`` from SQS GetQueueAttributes;
- ``urr_worker_dlq_oldest_age_seconds``: SQS has no queue attribute for it (only the
  CloudWatch metric ``ApproximateAgeOfOldestMessage``, which moto does not produce), so while
  the DLQ holds messages the exporter looks at up to 10 of them without consuming them
  (ReceiveMessage with a visibility timeout of 0) and takes the oldest ``SentTimestamp``.
  Looking raises their ``ApproximateReceiveCount``, harmless on a DLQ (nothing redrives from
  it by count); on the command queue it would push live commands towards the DLQ, so that
  queue is never looked into. On a FIFO DLQ with many groups the 10 may miss an older
  message: the figure is a lower bound. AWS resets a FIFO message's timestamp when it moves
  to the DLQ, so there it reads "time in the DLQ";
- ``urr_worker_queue_oldest_age_seconds`` (command queue) from CloudWatch's
  ``ApproximateAgeOfOldestMessage`` when ``exporter.cloudwatch_queue_age`` is on (AWS). The
  local stack has no CloudWatch figures: there the local poller reports it from what it
  receives (``local/poller.py``);
- ``urr_kafka_consumer_lag{group,topic,partition}``: end offset minus committed offset, for
  every group the broker lists (a group with nothing committed on a partition lags by the
  whole partition).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, Field

from urr_common.clients import open_aws_clients
from urr_common.logs import get_logger
from urr_common.service import sleep_unless_stopped
from urr_common.settings import HttpSettings, KafkaSettings, load_settings
from urr_ticket_worker.metrics import oldest_age_s
from urr_ticket_worker.process import Heartbeat, LoopBody, run_process
from urr_ticket_worker.settings import TicketWorkerSettings

_LOG = get_logger(__name__)

#: (topic, partition) -> offset
Offsets = Mapping[tuple[str, int], int]


class ExporterOptions(BaseModel):
    poll_s: float = Field(default=5.0, gt=0.0, le=300.0)
    #: Read the command queue's oldest-message age from CloudWatch (AWS only: moto has no
    #: SQS figures in CloudWatch, and the local poller reports it there).
    cloudwatch_queue_age: bool = False


class ExporterSettings(TicketWorkerSettings):
    service_name: str = "ticket-exporter"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3025))
    exporter: ExporterOptions = Field(default_factory=ExporterOptions)


def consumer_lag(end: Offsets, committed: Offsets) -> dict[tuple[str, int], int]:
    """Lag per partition of the topics a group has committed on (never negative)."""
    topics = {topic for topic, _ in committed}
    return {
        (topic, partition): max(0, last - committed.get((topic, partition), 0))
        for (topic, partition), last in end.items()
        if topic in topics
    }


class ExporterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.dlq = Gauge(
            "urr_worker_dlq_messages", "Messages in ticket-events-dlq.fifo.", registry=registry
        )
        self.queue = Gauge(
            "urr_worker_queue_messages",
            "Booking commands waiting on ticket-events.fifo (visible).",
            registry=registry,
        )
        self.lag = Gauge(
            "urr_kafka_consumer_lag",
            "Records between a group's committed offset and the partition's end.",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.dlq_oldest = Gauge(
            "urr_worker_dlq_oldest_age_seconds",
            "Age of the oldest message seen in ticket-events-dlq.fifo (0 when empty).",
            registry=registry,
        )
        self.failures = Counter(
            "urr_exporter_poll_failures",
            "Polls that failed, by source (sqs, kafka).",
            ["source"],
            registry=registry,
        )


async def queue_depths(sqs: Any, queue_url: str, dlq_url: str) -> tuple[int, int]:
    depths = []
    for url in (queue_url, dlq_url):
        answer = await sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        depths.append(int(answer["Attributes"]["ApproximateNumberOfMessages"]))
    return depths[0], depths[1]


async def dlq_oldest_age_s(sqs: Any, dlq_url: str) -> float:
    """Look at up to 10 dead letters without taking them (see the module docstring)."""
    answer = await sqs.receive_message(
        QueueUrl=dlq_url,
        MaxNumberOfMessages=10,
        VisibilityTimeout=0,
        WaitTimeSeconds=0,
        MessageSystemAttributeNames=["SentTimestamp"],
    )
    return oldest_age_s(answer.get("Messages", []), time.time_ns() // 1_000_000)


async def cloudwatch_oldest_age_s(cloudwatch: Any, queue_name: str) -> float | None:
    """The newest ``ApproximateAgeOfOldestMessage`` of the last 5 minutes, if any."""
    now = datetime.now(UTC)
    answer = await cloudwatch.get_metric_data(
        MetricDataQueries=[
            {
                "Id": "age",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/SQS",
                        "MetricName": "ApproximateAgeOfOldestMessage",
                        "Dimensions": [{"Name": "QueueName", "Value": queue_name}],
                    },
                    "Period": 60,
                    "Stat": "Maximum",
                },
            }
        ],
        StartTime=now - timedelta(minutes=5),
        # Past now: a datapoint of this very second still counts (and the future is empty).
        EndTime=now + timedelta(minutes=1),
        ScanBy="TimestampDescending",
    )
    for result in answer.get("MetricDataResults", []):
        values = result.get("Values") or []
        if values:
            return float(values[0])
    return None


async def group_lags(kafka: KafkaSettings) -> dict[str, dict[tuple[str, int], int]]:
    """Every listed group's lag per partition."""
    from urr_common.clients import kafka_admin, kafka_consumer

    admin = kafka_admin(kafka)
    # A consumer without a group only reads end offsets; it joins nothing.
    reader = kafka_consumer(kafka, enable_auto_commit=False)
    await admin.start()
    await reader.start()
    try:
        groups = [str(group[0]) for group in await admin.list_consumer_groups()]
        topics = [topic for topic in await reader.topics() if not topic.startswith("__")]
        partitions = _partitions(reader, topics)
        if not groups or not partitions:
            return {}
        committed: dict[str, dict[tuple[str, int], int]] = {}
        for group in groups:
            # Partitions named: asking for "all of the group's" is not understood by every
            # Kafka-protocol broker (Tansu closes the connection).
            offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
            committed[group] = {
                (tp.topic, tp.partition): meta.offset
                for tp, meta in offsets.items()
                if meta.offset >= 0
            }
        ends = await reader.end_offsets(partitions)
        end = {(tp.topic, tp.partition): offset for tp, offset in ends.items()}
        return {group: consumer_lag(end, offsets) for group, offsets in committed.items()}
    finally:
        await reader.stop()
        await admin.close()


def _partitions(reader: Any, topics: Iterable[str]) -> list[Any]:
    from aiokafka import TopicPartition

    found = []
    for topic in topics:
        for partition in reader.partitions_for_topic(topic) or ():
            found.append(TopicPartition(topic, partition))
    return found


def exporter_loop(settings: ExporterSettings, registry: CollectorRegistry) -> LoopBody:
    metrics = ExporterMetrics(registry)

    queue_age = (
        Gauge(
            "urr_worker_queue_oldest_age_seconds",
            "Age of the oldest message on ticket-events.fifo (CloudWatch).",
            registry=registry,
        )
        if settings.exporter.cloudwatch_queue_age
        else None
    )
    services = ("sqs", "cloudwatch") if queue_age is not None else ("sqs",)

    async def body(stop: asyncio.Event, beat: Heartbeat) -> None:
        async with open_aws_clients(settings.aws, *services) as clients:
            sqs = clients["sqs"]
            while not stop.is_set():
                ok = True
                try:
                    queue_url = (await sqs.get_queue_url(QueueName=settings.sqs.queue_name))[
                        "QueueUrl"
                    ]
                    dlq_url = (await sqs.get_queue_url(QueueName=settings.sqs.dlq_name))["QueueUrl"]
                    waiting, dead = await queue_depths(sqs, queue_url, dlq_url)
                    metrics.queue.set(waiting)
                    metrics.dlq.set(dead)
                    metrics.dlq_oldest.set(await dlq_oldest_age_s(sqs, dlq_url) if dead else 0)
                    if queue_age is not None:
                        age = await cloudwatch_oldest_age_s(
                            clients["cloudwatch"], settings.sqs.queue_name
                        )
                        # No datapoint: CloudWatch reports nothing for an idle queue.
                        queue_age.set(age or 0)
                except Exception as exc:  # SQS unreachable: keep the last figures, say so
                    ok = False
                    metrics.failures.labels("sqs").inc()
                    beat.failed(exc)
                    _LOG.warning("exporter_sqs_failed", error=repr(exc))
                try:
                    for group, lags in (await group_lags(settings.kafka)).items():
                        for (topic, partition), lag in lags.items():
                            metrics.lag.labels(group, topic, str(partition)).set(lag)
                except Exception as exc:
                    ok = False
                    metrics.failures.labels("kafka").inc()
                    beat.failed(exc)
                    _LOG.warning("exporter_kafka_failed", error=repr(exc))
                if ok:
                    beat.ok()
                await sleep_unless_stopped(stop, settings.exporter.poll_s)

    return body


def main() -> None:
    settings = load_settings(ExporterSettings)
    run_process(settings, "exporter", lambda registry: exporter_loop(settings, registry))


if __name__ == "__main__":
    main()
