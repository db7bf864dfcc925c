"""DynamoDB adapter of the proof-of-work gate: each solved challenge is used once.

A used challenge is one item of the positions table, SK ``pow#<nonce>`` (a request id is a
UUID and never starts so), naming the request id that used it and expiring with the challenge
(``ttl``; DynamoDB deletes it late and moto never, which is harmless: an expired challenge is
refused before this write). The write is conditional, so of two requests racing with one
solution exactly one records it. The same request id may present its solution again (a retry
after a lost answer): it finds its own record and gets the place it already holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

#: Sort keys starting with this hold used challenges.
POW_USE_PREFIX = "pow#"
#: The record outlives the challenge by this much, for clocks a little apart.
CLOCK_SLACK_S = 300


class PowUseStore:
    """Records used challenges in the positions table."""

    def __init__(self, client: DynamoDBClient, *, positions_table: str) -> None:
        self._db = client
        self.positions_table = positions_table

    def record_use(self, event_id: str, nonce: str, *, request_id: str, expires_at: int) -> bool:
        """True when this request id may use the challenge (first use, or its own retry)."""
        try:
            self._db.put_item(
                TableName=self.positions_table,
                Item={
                    "eventId": {"S": event_id},
                    "requestId": {"S": POW_USE_PREFIX + nonce},
                    "ownerRequestId": {"S": request_id},
                    "ttl": {"N": str(expires_at + CLOCK_SLACK_S)},
                },
                ConditionExpression="attribute_not_exists(requestId) OR ownerRequestId = :me",
                ExpressionAttributeValues={":me": {"S": request_id}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True
