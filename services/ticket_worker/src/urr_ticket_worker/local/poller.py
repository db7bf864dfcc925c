"""Local stand-in for the Lambda SQS event-source mapping (moto runs none).

Receives up to ``batch_size`` messages (long poll ``wait_time_s``), builds the SQS event the
Lambda service would send, calls ``urr_ticket_worker.handler.lambda_handler`` and deletes the
messages it did not report in ``batchItemFailures``. Failed messages are left alone: they come
back after the visibility timeout and, after ``maxReceiveCount`` receives, SQS moves them to the
dead-letter queue. The handler runs in one dedicated thread, as in a Lambda container (its
module-level event loop must not meet this process's loop).

Run: ``python -m urr_ticket_worker.local.poller`` (health on ``URR_HTTP__PORT``, default 3020).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from urr_common.clients import open_aws_clients
from urr_common.logs import get_logger
from urr_common.service import sleep_unless_stopped
from urr_common.settings import load_settings
from urr_ticket_worker import handler
from urr_ticket_worker.metrics import WorkerMetrics, oldest_age_s
from urr_ticket_worker.process import Heartbeat, LoopBody, run_process
from urr_ticket_worker.settings import PollerSettings, TicketWorkerSettings

_LOG = get_logger(__name__)


@dataclass(frozen=True)
class QueueRef:
    url: str
    arn: str


def sqs_event(messages: list[dict[str, Any]], queue: QueueRef, region: str) -> dict[str, Any]:
    """The event Lambda's SQS event source builds from received messages."""
    records = []
    for message in messages:
        attributes = {str(k): str(v) for k, v in message.get("Attributes", {}).items()}
        records.append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": message.get("Body", ""),
                "attributes": attributes,
                "messageAttributes": message.get("MessageAttributes", {}),
                "md5OfBody": message.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue.arn,
                "awsRegion": region,
            }
        )
    return {"Records": records}


async def resolve_queue(sqs: Any, name: str) -> QueueRef:
    url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    attributes = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return QueueRef(url=url, arn=attributes["Attributes"]["QueueArn"])


class Poller:
    """One receive -> handle -> delete round at a time."""

    def __init__(
        self,
        sqs: Any,
        queue: QueueRef,
        settings: TicketWorkerSettings,
        executor: ThreadPoolExecutor,
        messages: Counter | None = None,
        oldest: Gauge | None = None,
    ) -> None:
        self._sqs = sqs
        self._queue = queue
        self._settings = settings
        self._executor = executor
        self._messages = messages
        self._oldest = oldest

    async def poll_once(self) -> tuple[int, int]:
        """Returns (deleted, failed) for this round."""
        sqs_settings = self._settings.sqs
        received = await self._sqs.receive_message(
            QueueUrl=self._queue.url,
            MaxNumberOfMessages=sqs_settings.batch_size,
            WaitTimeSeconds=sqs_settings.wait_time_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages: list[dict[str, Any]] = received.get("Messages", [])
        if self._oldest is not None:
            # FIFO hands out each group's oldest message first, so what one receive gets
            # is the front of the queue; an empty receive means nothing waits.
            self._oldest.set(oldest_age_s(messages, time.time_ns() // 1_000_000))
        if not messages:
            return 0, 0
        event = sqs_event(messages, self._queue, self._settings.aws.region)
        loop = asyncio.get_running_loop()
        try:
            response = await loop.run_in_executor(
                self._executor, handler.lambda_handler, event, None
            )
            failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        except Exception:  # an invocation error fails the whole batch, as in Lambda
            _LOG.exception("invocation_failed", messages=len(messages))
            failed = {message["MessageId"] for message in messages}
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            await self._sqs.delete_message_batch(
                QueueUrl=self._queue.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        if self._messages is not None:
            self._messages.labels("deleted").inc(len(done))
            self._messages.labels("failed").inc(len(failed))
        if failed:
            _LOG.info("batch_item_failures", failed=len(failed), deleted=len(done))
        return len(done), len(failed)


def poller_loop(settings: TicketWorkerSettings, registry: CollectorRegistry) -> LoopBody:
    messages = Counter(
        "urr_ticket_poller_messages",
        "SQS messages handed to the worker handler, by what became of them.",
        ["outcome"],
        registry=registry,
    )

    oldest = Gauge(
        "urr_worker_queue_oldest_age_seconds",
        "Age of the oldest message of the last receive from ticket-events.fifo (0: none "
        "waited); in AWS the exporter reads it from CloudWatch.",
        registry=registry,
    )
    # The handler's own figures (batches, results, latency), as the Lambda reports them in EMF.
    worker_metrics = WorkerMetrics(registry)

    async def body(stop: asyncio.Event, beat: Heartbeat) -> None:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lambda")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, handler.configure, settings, worker_metrics)
        try:
            async with open_aws_clients(settings.aws, "sqs") as clients:
                sqs = clients["sqs"]
                poller: Poller | None = None
                while not stop.is_set():
                    try:
                        if poller is None:
                            queue = await resolve_queue(sqs, settings.sqs.queue_name)
                            poller = Poller(sqs, queue, settings, executor, messages, oldest)
                        await poller.poll_once()
                        beat.ok()
                    except Exception as exc:  # SQS unreachable or the queue missing: retry
                        beat.failed(exc)
                        _LOG.warning("poll_failed", error=repr(exc))
                        await sleep_unless_stopped(stop, 1.0)
        finally:
            await loop.run_in_executor(executor, handler.close)
            executor.shutdown(wait=True)

    return body


def main() -> None:
    settings = load_settings(PollerSettings)
    run_process(settings, "sqs-poller", lambda registry: poller_loop(settings, registry))


if __name__ == "__main__":
    main()
