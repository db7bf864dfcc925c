"""The exporter against real SQS (moto) and Kafka (Tansu): DLQ depth and consumer lag appear
on its metrics listener, so the DLQ and lag alerts read numbers something exports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from urr_devstack.procs import free_port
from urr_devstack.testing import wait_process_listening
from urr_ticket_worker.exporter import cloudwatch_oldest_age_s, consumer_lag
from urr_ticket_worker.testing import Queues, create_topics, sqs_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lag_is_end_minus_committed_for_topics_the_group_reads() -> None:
    end = {("a", 0): 10, ("a", 1): 4, ("b", 0): 7}
    assert consumer_lag(end, {("a", 0): 6}) == {("a", 0): 4, ("a", 1): 4}
    # A committed offset past a partition's end (a truncated topic) is no negative lag.
    assert consumer_lag(end, {("b", 0): 9}) == {("b", 0): 0}
    assert consumer_lag(end, {}) == {}


async def _metric(session: aiohttp.ClientSession, url: str, line_start: str) -> float | None:
    async with session.get(url) as response:
        for line in (await response.text()).splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None


# Set-up (moto, Tansu, queues) plus a child process's start-up on a starved host: over the
# suite's 60 s in a CI run although every step was correct (see START_UP_S).
@pytest.mark.timeout(150)
async def test_dlq_depth_and_consumer_lag_are_exported(
    moto_endpoint: str, kafka_bootstrap: str, queues: Queues, tmp_path: Path
) -> None:
    topic = f"lag-{uuid.uuid4().hex[:6]}"
    group = f"group-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(create_topics, kafka_bootstrap, [topic])
    async with sqs_client(moto_endpoint) as sqs:
        for n in range(3):
            await sqs.send_message(
                QueueUrl=queues.dlq_url, MessageBody=f"dead {n}", MessageGroupId="g",
                MessageDeduplicationId=f"d{n}",
            )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(10):
            await producer.send_and_wait(topic, b"x", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.getone()  # joined and assigned
        await consumer.commit({TopicPartition(topic, 0): 4})
    finally:
        await consumer.stop()

    port, metrics_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("URR_")}
    env.update(
        {
            "URR_HTTP__PORT": str(port),
            "URR_METRICS__PORT": str(metrics_port),
            "URR_AWS__ENDPOINT_URL": moto_endpoint,
            "URR_AWS__ACCESS_KEY_ID": "test",
            "URR_AWS__SECRET_ACCESS_KEY": "test",
            "URR_SQS__QUEUE_NAME": queues.name,
            "URR_SQS__DLQ_NAME": queues.dlq_name,
            "URR_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
            "URR_EXPORTER__POLL_S": "0.5",
        }
    )
    with (tmp_path / "exporter.log").open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "urr_ticket_worker.exporter", env=env, stdout=sink, stderr=sink
        )
    lag_line = f'urr_kafka_consumer_lag{{group="{group}",partition="0",topic="{topic}"}}'
    seen: tuple[float | None, float | None] = (None, None)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            await wait_process_listening(metrics_port, process, tmp_path / "exporter.log")
            for _ in range(100):
                assert process.returncode is None, (tmp_path / "exporter.log").read_text()
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    seen = (
                        await _metric(session, url, "urr_worker_dlq_messages "),
                        await _metric(session, url, lag_line),
                    )
                if seen == (3.0, 6.0):
                    break
                await asyncio.sleep(0.3)
            assert seen == (3.0, 6.0), (tmp_path / "exporter.log").read_text()[-3000:]
            # The oldest dead letter's age, read by looking without taking: all 3 stay.
            age = await _metric(session, url, "urr_worker_dlq_oldest_age_seconds ")
            assert age is not None
            assert 0 < age < 120
        async with sqs_client(moto_endpoint) as sqs:
            attributes = await sqs.get_queue_attributes(
                QueueUrl=queues.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
            )
            assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "3"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await process.wait()


async def test_the_command_queue_age_is_read_from_cloudwatch(moto_endpoint: str) -> None:
    """In AWS SQS publishes ApproximateAgeOfOldestMessage to CloudWatch; moto does not, so
    the datapoint is put here as SQS would."""
    import aioboto3

    queue = f"age-{uuid.uuid4().hex[:8]}.fifo"
    session = aioboto3.Session()
    kwargs = {
        "endpoint_url": moto_endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
    }
    async with session.client("cloudwatch", **kwargs) as cloudwatch:
        assert await cloudwatch_oldest_age_s(cloudwatch, queue) is None
        await cloudwatch.put_metric_data(
            Namespace="AWS/SQS",
            MetricData=[
                {
                    "MetricName": "ApproximateAgeOfOldestMessage",
                    "Dimensions": [{"Name": "QueueName", "Value": queue}],
                    "Value": 725.0,
                    "Unit": "Seconds",
                }
            ],
        )
        assert await cloudwatch_oldest_age_s(cloudwatch, queue) == 725.0
