"""The devstack's moto (``urr_devstack.moto_server``, cheaper SQS clock, names and validation)
answers as moto does: FIFO validation errors, deduplication and the message counts."""

from __future__ import annotations

import uuid

import botocore.exceptions
import pytest

from urr_ticket_worker.testing import sqs_client

pytestmark = pytest.mark.integration


async def test_fifo_validation_deduplication_and_counts_are_moto_s(moto_endpoint: str) -> None:
    async with sqs_client(moto_endpoint) as sqs:
        name = f"patched-{uuid.uuid4().hex[:8]}"
        fifo = (await sqs.create_queue(QueueName=f"{name}.fifo", Attributes={"FifoQueue": "true"}))[
            "QueueUrl"
        ]
        with pytest.raises(botocore.exceptions.ClientError, match="MessageGroupId"):
            await sqs.send_message(QueueUrl=fifo, MessageBody="x", MessageDeduplicationId="d")
        with pytest.raises(botocore.exceptions.ClientError, match="ContentBasedDeduplication"):
            await sqs.send_message(QueueUrl=fifo, MessageBody="x", MessageGroupId="g")
        answer = await sqs.send_message_batch(
            QueueUrl=fifo,
            Entries=[
                {
                    "Id": str(i),
                    "MessageBody": "x",
                    "MessageGroupId": "g",
                    "MessageDeduplicationId": d,
                }
                for i, d in enumerate(["a", "b", "a"])
            ],
        )
        assert len(answer["Successful"]) == 3
        attributes = (await sqs.get_queue_attributes(QueueUrl=fifo, AttributeNames=["All"]))[
            "Attributes"
        ]
        assert attributes["ApproximateNumberOfMessages"] == "2"  # "a" again was dropped
        assert attributes["ContentBasedDeduplication"] == "false"
        received = await sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=10)
        assert [m["Body"] for m in received["Messages"]] == ["x", "x"]
        attributes = (await sqs.get_queue_attributes(QueueUrl=fifo, AttributeNames=["All"]))[
            "Attributes"
        ]
        assert attributes["ApproximateNumberOfMessagesNotVisible"] == "2"
        assert attributes["ApproximateNumberOfMessages"] == "0"
        content = (
            await sqs.create_queue(
                QueueName=f"{name}-cbd.fifo",
                Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
            )
        )["QueueUrl"]
        await sqs.send_message(QueueUrl=content, MessageBody="same", MessageGroupId="g")
        await sqs.send_message(QueueUrl=content, MessageBody="same", MessageGroupId="g")
        attributes = (await sqs.get_queue_attributes(QueueUrl=content, AttributeNames=["All"]))[
            "Attributes"
        ]
        assert attributes["ApproximateNumberOfMessages"] == "1"
        standard = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        await sqs.send_message(QueueUrl=standard, MessageBody="y")
        with pytest.raises(botocore.exceptions.ClientError, match="DelaySeconds"):
            await sqs.send_message(
                QueueUrl=fifo,
                MessageBody="x",
                MessageGroupId="g",
                MessageDeduplicationId="c",
                DelaySeconds=5,
            )
