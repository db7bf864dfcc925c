"""Creating the two tables (local stack and tests; SAM creates them in AWS).

The devstack calls ``ensure_tables`` against its DynamoDB stand-in before starting the stand-ins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from urr_vwr_lambda.settings import TableSettings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


#: The attribute DynamoDB expires positions by (epoch seconds; moto does not enforce it).
TTL_ATTRIBUTE = "ttl"


def counters_table(tables: TableSettings) -> dict[str, Any]:
    """``CreateTable`` arguments of ``counters``: one item per event."""
    return {
        "TableName": tables.counters,
        "AttributeDefinitions": [{"AttributeName": "eventId", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "eventId", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }


def positions_table(tables: TableSettings) -> dict[str, Any]:
    """``CreateTable`` arguments of ``positions``: one item per (event, request), the users'
    claims and the line (``urr_vwr_lambda.store``). No index: the advancer reads the line by
    key."""
    return {
        "TableName": tables.positions,
        "AttributeDefinitions": [
            {"AttributeName": "eventId", "AttributeType": "S"},
            {"AttributeName": "requestId", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "eventId", "KeyType": "HASH"},
            {"AttributeName": "requestId", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def ensure_tables(client: DynamoDBClient, tables: TableSettings) -> None:
    """Create ``counters`` and ``positions`` (TTL on ``ttl``) when missing."""
    existing = set(client.list_tables().get("TableNames", []))
    if tables.counters not in existing:
        _create(client.create_table, **counters_table(tables))
    if tables.positions not in existing:
        _create(client.create_table, **positions_table(tables))
        try:
            client.update_time_to_live(
                TableName=tables.positions,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
        except ClientError as exc:
            # dynalite, the local stand-in, has no TTL; nothing relies on expiry (every read
            # treats ``ttl < now`` as gone, as DynamoDB deletes late anyway).
            if exc.response.get("Error", {}).get("Code") != "UnknownOperationException":
                raise


def _create(create: object, **kwargs: object) -> None:
    try:
        create(**kwargs)  # type: ignore[operator]
    except ClientError as exc:
        # Two processes starting together: the other one created it first.
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
