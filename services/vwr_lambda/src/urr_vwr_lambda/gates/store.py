"""DynamoDB adapter of the gates: event gate settings, client claims, access codes.

On the event's ``counters`` item: ``placesPerClient`` (absent: the setting's default),
``accessCodeRequired``, ``accessCodeSalt`` (binary, made once with the first batch),
``accessCodeBatches`` (the batch ids).

In the ``positions`` table, beside the places (sort keys no request id, claim or line key can
take):

- ``client#<address>``: the places an anonymous client address holds, ``holders`` a map of
  request id to ``[epoch, claimedAt]`` (the room's run and the time the slot was taken), and
  ``version`` for compare-and-set. Entries of an earlier epoch, or whose place is gone, given
  up or admitted, are pruned when the client asks for one more place (a slot whose place is
  still being written, younger than ``PENDING_GRACE_S``, counts as held); ``ttl`` (a place's
  24 h) drops the item once nothing is left in it.
- ``code#<hmac hex>``: one access code: ``batchId``, ``maxUses``, ``used``, optional
  ``boundUserId`` and ``revoked``.
- ``codebatch#<id>``: a batch: ``hashes`` (binary set), ``maxUses``, ``count``, ``createdAt``,
  ``createdBy``, ``label`` and ``revoked``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from urr_vwr_lambda.ids import user_claim_key
from urr_vwr_lambda.store import POSITION_TTL_S, VwrStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

Item = Mapping[str, Any]
CLIENT_PREFIX = "client#"
CODE_PREFIX = "code#"
BATCH_PREFIX = "codebatch#"
_BATCH_KEYS = 100
_WRITE_BATCH = 25


class StaleClient(RuntimeError):
    """The client item changed under a compare-and-set (another assign of the same client)."""


class CodeRefused(Exception):
    """An access code was not accepted; ``reason`` is the problem code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class GateConfig:
    event_id: str
    epoch: int
    places_per_client: int | None
    access_code_required: bool
    salt: bytes | None


@dataclass(frozen=True)
class ClientHolders:
    key: str
    version: int | None
    #: request id -> (epoch, claimed at, epoch seconds)
    holders: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchUsage:
    batch_id: str
    count: int
    max_uses: int
    used: int
    codes_used: int
    codes_exhausted: int
    revoked: bool
    label: str | None
    created_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "batchId": self.batch_id,
            "count": self.count,
            "uses": self.max_uses,
            "used": self.used,
            "codesUsed": self.codes_used,
            "codesExhausted": self.codes_exhausted,
            "revoked": self.revoked,
            "label": self.label,
            "createdAt": self.created_at,
        }


def _failed(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code", "") == "ConditionalCheckFailedException"


def _n(item: Item, name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(value["N"]) if value and "N" in value else default


def _num(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _holders(key: str, item: Item) -> ClientHolders:
    holders: dict[str, tuple[int, int]] = {}
    for rid, value in item.get("holders", {}).get("M", {}).items():
        pair = value.get("L", [])
        if len(pair) == 2:
            holders[rid] = (int(pair[0]["N"]), int(pair[1]["N"]))
    return ClientHolders(key=key, version=_n(item, "version"), holders=holders)


def refusal_reason(item: Item | None, user_id: str | None) -> str:
    """Why a code's conditional use failed, from the item as it was (pure)."""
    if not item:
        return "access_code_invalid"
    if "revoked" in item:
        return "access_code_revoked"
    bound = item.get("boundUserId", {}).get("S")
    if bound is not None and user_id is None:
        return "access_code_login_required"
    if bound is not None and bound != user_id:
        return "access_code_other_account"
    return "access_code_exhausted"


class GateStore:
    def __init__(self, places: VwrStore) -> None:
        self._places = places
        self._db: DynamoDBClient = places._db
        self.counters_table = places.counters_table
        self.positions_table = places.positions_table

    def _key(self, event_id: str, sort_key: str) -> dict[str, Any]:
        return {"eventId": {"S": event_id}, "requestId": {"S": sort_key}}

    # -- event settings --------------------------------------------------------------------

    def get_config(self, event_id: str) -> GateConfig | None:
        answer = self._db.get_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": event_id}},
            ProjectionExpression="epoch, placesPerClient, accessCodeRequired, accessCodeSalt",
        )
        item = answer.get("Item")
        if not item:
            return None
        per_client = item.get("placesPerClient")
        salt = item.get("accessCodeSalt")
        return GateConfig(
            event_id=event_id,
            epoch=_n(item, "epoch", 1),
            places_per_client=int(per_client["N"]) if per_client else None,
            access_code_required=bool(item.get("accessCodeRequired", {}).get("BOOL", False)),
            salt=bytes(salt["B"]) if salt else None,
        )

    def set_config(
        self,
        event_id: str,
        *,
        places_per_client: int | None,
        access_code_required: bool | None,
    ) -> None:
        sets: list[str] = []
        values: dict[str, Any] = {}
        if places_per_client is not None:
            sets.append("placesPerClient = :ppc")
            values[":ppc"] = _num(places_per_client)
        if access_code_required is not None:
            sets.append("accessCodeRequired = :acr")
            values[":acr"] = {"BOOL": access_code_required}
        if not sets:
            return
        self._db.update_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": event_id}},
            UpdateExpression="SET " + ", ".join(sets),
            ExpressionAttributeValues=values,
        )

    def ensure_salt(self, event_id: str, fresh: bytes) -> bytes:
        """The event's code salt, set to ``fresh`` if it has none yet (first writer wins)."""
        answer = self._db.update_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": event_id}},
            UpdateExpression="SET accessCodeSalt = if_not_exists(accessCodeSalt, :salt)",
            ConditionExpression="attribute_exists(eventId)",
            ExpressionAttributeValues={":salt": {"B": fresh}},
            ReturnValues="ALL_NEW",
        )
        return bytes(answer["Attributes"]["accessCodeSalt"]["B"])

    # -- client claims ---------------------------------------------------------------------

    def read_assign_view(
        self, event_id: str, request_id: str, client: str | None, user_id: str | None = None
    ) -> tuple[int | None, Item | None, ClientHolders | None, Item | None]:
        """The room's epoch, this request's place, the client's holders and the user's claim:
        one BatchGetItem."""
        keys = [self._key(event_id, request_id)]
        if client is not None:
            keys.append(self._key(event_id, CLIENT_PREFIX + client))
        if user_id is not None:
            keys.append(self._key(event_id, user_claim_key(user_id)))
        request = {
            self.counters_table: {
                "Keys": [{"eventId": {"S": event_id}}],
                "ConsistentRead": True,
                "ProjectionExpression": "epoch",
            },
            self.positions_table: {"Keys": keys, "ConsistentRead": True},
        }
        found = self._places.batch_get(request)
        counters = found.get(self.counters_table, [])
        epoch = _n(counters[0], "epoch", 1) if counters else None
        place = holders = claim = None
        for item in found.get(self.positions_table, []):
            sort_key = item["requestId"]["S"]
            if sort_key == request_id:
                place = item
            elif sort_key.startswith(CLIENT_PREFIX) and client is not None:
                holders = _holders(client, item)
            else:
                claim = item
        if client is not None and holders is None:
            holders = ClientHolders(key=client, version=None)
        return epoch, place, holders, claim

    def read_client(self, event_id: str, key: str) -> ClientHolders:
        answer = self._db.get_item(
            TableName=self.positions_table,
            Key=self._key(event_id, CLIENT_PREFIX + key),
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return _holders(key, item) if item else ClientHolders(key=key, version=None)

    def write_client(
        self,
        event_id: str,
        seen: ClientHolders,
        holders: dict[str, tuple[int, int]],
        *,
        now_s: int,
    ) -> None:
        """Replace the client's holders if nobody changed them since ``seen``; else StaleClient."""
        item = {
            **self._key(event_id, CLIENT_PREFIX + seen.key),
            "holders": {"M": {rid: {"L": [_num(e), _num(at)]} for rid, (e, at) in holders.items()}},
            "version": _num((seen.version or 0) + 1),
            "ttl": _num(now_s + POSITION_TTL_S),
        }
        if seen.version is None:
            condition, values = "attribute_not_exists(requestId)", None
        else:
            condition, values = "version = :seen", {":seen": _num(seen.version)}
        kwargs: dict[str, Any] = {"ExpressionAttributeValues": values} if values else {}
        try:
            self._db.put_item(
                TableName=self.positions_table,
                Item=item,
                ConditionExpression=condition,
                **kwargs,
            )
        except ClientError as exc:
            if _failed(exc):
                raise StaleClient(seen.key) from exc
            raise

    def release_client(self, event_id: str, key: str, request_id: str) -> None:
        """Drop ``request_id`` from the client's holders (its assign took no place)."""
        try:
            self._db.update_item(
                TableName=self.positions_table,
                Key=self._key(event_id, CLIENT_PREFIX + key),
                UpdateExpression="REMOVE holders.#rid ADD version :one",
                ConditionExpression="attribute_exists(holders.#rid)",
                ExpressionAttributeNames={"#rid": request_id},
                ExpressionAttributeValues={":one": _num(1)},
            )
        except ClientError as exc:
            if not _failed(exc):
                raise

    def places(self, event_id: str, request_ids: Iterable[str]) -> dict[str, Item]:
        """The place items of ``request_ids`` that exist (strongly consistent)."""
        keys = [self._key(event_id, rid) for rid in request_ids]
        found: dict[str, Item] = {}
        for start in range(0, len(keys), _BATCH_KEYS):
            chunk = {"Keys": keys[start : start + _BATCH_KEYS], "ConsistentRead": True}
            answer = self._places.batch_get({self.positions_table: chunk})
            for item in answer.get(self.positions_table, []):
                found[item["requestId"]["S"]] = item
        return found

    # -- access codes ----------------------------------------------------------------------

    def put_batch(
        self,
        event_id: str,
        batch_id: str,
        hashes: list[tuple[str, str | None]],
        *,
        max_uses: int,
        label: str | None,
        created_by: str,
        now_s: int,
    ) -> None:
        """Store a batch's codes (``(hash, bound account)``), then the batch item naming them."""
        requests = []
        for digest, account in hashes:
            item: dict[str, Any] = {
                **self._key(event_id, CODE_PREFIX + digest),
                "batchId": {"S": batch_id},
                "maxUses": _num(max_uses),
                "used": _num(0),
            }
            if account is not None:
                item["boundUserId"] = {"S": account}
            requests.append({"PutRequest": {"Item": item}})
        for start in range(0, len(requests), _WRITE_BATCH):
            self._batch_write(requests[start : start + _WRITE_BATCH])
        batch: dict[str, Any] = {
            **self._key(event_id, BATCH_PREFIX + batch_id),
            "hashes": {"BS": [bytes.fromhex(d) for d, _ in hashes]},
            "maxUses": _num(max_uses),
            "count": _num(len(hashes)),
            "createdAt": _num(now_s),
            "createdBy": {"S": created_by},
        }
        if label:
            batch["label"] = {"S": label}
        self._db.put_item(TableName=self.positions_table, Item=batch)
        self._db.update_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": event_id}},
            UpdateExpression="ADD accessCodeBatches :batch",
            ExpressionAttributeValues={":batch": {"SS": [batch_id]}},
        )

    def batch_ids(self, event_id: str) -> list[str]:
        """The event's batches, as listed on its counters item."""
        answer = self._db.get_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": event_id}},
            ProjectionExpression="accessCodeBatches",
            ConsistentRead=True,
        )
        return sorted(answer.get("Item", {}).get("accessCodeBatches", {}).get("SS", []))

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        pending: dict[str, Any] = {self.positions_table: requests}
        for attempt in range(6):
            answer = self._db.batch_write_item(RequestItems=pending)
            pending = answer.get("UnprocessedItems") or {}
            if not pending:
                return
            time.sleep(0.01 * 2**attempt)
        raise RuntimeError("DynamoDB left writes unprocessed after retries")

    def consume_code(self, event_id: str, digest: str, user_id: str | None) -> None:
        """Take one use of a code, atomically; CodeRefused says why not (nothing written)."""
        condition = (
            "attribute_exists(requestId) AND attribute_not_exists(revoked) AND used < maxUses"
        )
        values: dict[str, Any] = {":one": _num(1)}
        if user_id is None:
            condition += " AND attribute_not_exists(boundUserId)"
        else:
            condition += " AND (attribute_not_exists(boundUserId) OR boundUserId = :user)"
            values[":user"] = {"S": user_id}
        try:
            self._db.update_item(
                TableName=self.positions_table,
                Key=self._key(event_id, CODE_PREFIX + digest),
                UpdateExpression="ADD used :one",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _failed(exc):
                raise
            old: Any = exc.response.get("Item")
            if old is None:
                # A stand-in that ignores ReturnValuesOnConditionCheckFailure (dynalite):
                # the item as it is now says why just as well, one read more.
                old = self._db.get_item(
                    TableName=self.positions_table,
                    Key=self._key(event_id, CODE_PREFIX + digest),
                    ConsistentRead=True,
                ).get("Item")
            raise CodeRefused(refusal_reason(old, user_id)) from exc

    def refund_code(self, event_id: str, digest: str) -> None:
        """Give back a use whose assign took no place."""
        try:
            self._db.update_item(
                TableName=self.positions_table,
                Key=self._key(event_id, CODE_PREFIX + digest),
                UpdateExpression="ADD used :minus",
                ConditionExpression="used > :zero",
                ExpressionAttributeValues={":minus": _num(-1), ":zero": _num(0)},
            )
        except ClientError as exc:
            if not _failed(exc):
                raise

    def _batch_item(self, event_id: str, batch_id: str) -> Item | None:
        answer = self._db.get_item(
            TableName=self.positions_table,
            Key=self._key(event_id, BATCH_PREFIX + batch_id),
            ConsistentRead=True,
        )
        return answer.get("Item")

    def batch_usage(self, event_id: str, batch_id: str) -> BatchUsage | None:
        batch = self._batch_item(event_id, batch_id)
        if batch is None:
            return None
        digests = [bytes(h).hex() for h in batch.get("hashes", {}).get("BS", [])]
        codes = self.places(event_id, [CODE_PREFIX + d for d in digests])
        uses = [_n(item, "used") for item in codes.values()]
        max_uses = _n(batch, "maxUses", 1)
        return BatchUsage(
            batch_id=batch_id,
            count=_n(batch, "count"),
            max_uses=max_uses,
            used=sum(uses),
            codes_used=sum(1 for u in uses if u > 0),
            codes_exhausted=sum(1 for u in uses if u >= max_uses),
            revoked="revoked" in batch,
            label=batch.get("label", {}).get("S"),
            created_at=_n(batch, "createdAt"),
        )

    def revoke_batch(self, event_id: str, batch_id: str, *, now_s: int) -> bool:
        """Mark the batch and each of its codes revoked; False when there is no such batch.

        The batch first, then its codes one by one: a repeated call finishes an interrupted
        one. A use taken before a code's mark stands (it happened before the revoke).
        """
        batch = self._batch_item(event_id, batch_id)
        if batch is None:
            return False
        self._db.update_item(
            TableName=self.positions_table,
            Key=self._key(event_id, BATCH_PREFIX + batch_id),
            UpdateExpression="SET revoked = if_not_exists(revoked, :now)",
            ExpressionAttributeValues={":now": _num(now_s)},
        )
        for raw in batch.get("hashes", {}).get("BS", []):
            self._db.update_item(
                TableName=self.positions_table,
                Key=self._key(event_id, CODE_PREFIX + bytes(raw).hex()),
                UpdateExpression="SET revoked = if_not_exists(revoked, :now)",
                ExpressionAttributeValues={":now": _num(now_s)},
            )
        return True
