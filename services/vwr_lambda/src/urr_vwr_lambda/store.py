"""DynamoDB adapter: the counters and positions tables (low-level boto3 client).

``counters`` (PK ``eventId``): ``nextPosition`` (the last number handed out), ``servingCounter``
(every number up to it is admitted), ``isActive``, ``batchSize``, ``updatedAt`` (epoch ms),
``epoch`` (bumped by a reset, so rows of earlier runs count as gone without deleting them),
``admitRate`` (admissions per second, smoothed by the advancer), ``queueMethod`` (``fifo``,
``random``, ``passthrough``, ``reject``), ``orderSeed`` (hex, written once: the random
method's secret), ``orderSeedRevealedAt`` (epoch ms, written once: the operator revealed
the seed, ``admin._reveal``), ``prequeueStart`` and ``saleStart`` (epoch ms, written once:
the scheduled pre-queue, issue 19) and ``lineFloor`` (random method: every number up to it
has been granted or given up; ``servingCounter`` then counts grants). The item ``#active`` lists the
active events in a string set, so the advancer finds them with one GetItem, never a Scan.

``positions`` (PK ``eventId``, SK ``requestId``): ``position``, ``epoch``, ``userId``,
``createdAt``, ``lastSeen`` and ``ttl`` (epoch seconds; 24 h), ``abandoned``, ``token``,
``tokenExp``, ``admittedAt``, ``grantedAt`` and ``grantSeq`` (random method: the advancer
chose this place, the ``grantSeq``-th, which its pass is signed with), ``prequeue``
(taken during the pre-queue: let in at once to join Tier 2's roster, whatever its number),
``spentAt`` (epoch s: the place admitted its holder to Tier 2 and
that stay is over; written by the queue service, ``urr_queue.tier1_marks``). Items with SK
``user#<id>`` are a logged-in user's claim (``ownerRequestId``, ``claimedPosition``): one place
per user and event. Items with SK
``line#<epoch>#<position>`` are the line (``ownerRequestId``): the advancer reads the numbers
above the serving counter by key, in batches of 100, instead of querying an index. moto sorts
every item of the table on each Query (423 ms at 5,000 places, however few rows match), and a
key read costs the same in AWS as the index entry it replaces. DynamoDB's TTL deletes late (and
moto never), so every read also treats ``ttl < now`` as gone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from urr_common.fairness import QueueMethod, seed_commitment
from urr_vwr_lambda.ids import ACTIVE_REGISTRY_ID, line_key, user_claim_key
from urr_vwr_lambda.queueing import PositionRow

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

Item = Mapping[str, Any]
POSITION_TTL_S = 24 * 3600


class EventNotFound(LookupError):
    """No counters item for this event."""


class RoomInactive(RuntimeError):
    """The event exists but its waiting room is not active."""


class ClaimHeld(RuntimeError):
    """A claim put on the condition that the user holds none found one current."""


class StaleCounter(RuntimeError):
    """The serving counter or epoch changed under a compare-and-set (another advancer ran)."""


@dataclass(frozen=True)
class EventState:
    event_id: str
    is_active: bool
    next_position: int
    serving_counter: int
    batch_size: int
    updated_at_ms: int
    epoch: int
    admit_rate: float | None
    #: ``none`` or ``pow`` (the assign gate of ``pow_gate``), and the puzzle's difficulty.
    bot_challenge: str = "none"
    pow_bits: int = 0
    queue_method: QueueMethod = QueueMethod.FIFO
    #: The random method's seed (hex); secret while people queue.
    order_seed: str | None = None
    #: Random method: every number up to here was granted or given up.
    line_floor: int = 0
    #: How the line of this run is ordered: ``seq`` (numbers: fifo) or ``key`` (random).
    #: passthrough and reject keep the order they found.
    line_order: str = "seq"
    #: The scheduled pre-queue (epoch ms; both or neither, set once).
    prequeue_start_ms: int | None = None
    sale_start_ms: int | None = None
    #: When the operator revealed the seed (epoch ms): the event never draws by it again.
    order_seed_revealed_ms: int | None = None

    @property
    def waiting(self) -> int:
        """Numbers neither granted nor given up: a line ordered by key is settled up to its
        floor, one by number up to its serving counter."""
        done = self.line_floor if self.line_order == "key" else self.serving_counter
        return max(0, self.next_position - done)

    @property
    def has_prequeue(self) -> bool:
        return self.prequeue_start_ms is not None and self.sale_start_ms is not None

    def in_prequeue(self, now_ms: int) -> bool:
        """Whether a place taken now joins the pre-queue (before sale start)."""
        return self.sale_start_ms is not None and now_ms < self.sale_start_ms

    def prequeue_not_open(self, now_ms: int) -> bool:
        return self.prequeue_start_ms is not None and now_ms < self.prequeue_start_ms

    @property
    def seed_bytes(self) -> bytes:
        return bytes.fromhex(self.order_seed or "")

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "eventId": self.event_id,
            "isActive": self.is_active,
            "servingCounter": self.serving_counter,
            "nextPosition": self.next_position,
            "waiting": max(0, self.next_position - self.serving_counter),
            "updatedAt": self.updated_at_ms,
            "queueMethod": self.queue_method.value,
        }
        if self.order_seed:
            # Public from the start, so the seed revealed later can be checked against it.
            body["orderSeedCommitment"] = seed_commitment(self.seed_bytes)
        if self.prequeue_start_ms is not None and self.sale_start_ms is not None:
            body["prequeueStart"] = iso_of_ms(self.prequeue_start_ms)
            body["saleStart"] = iso_of_ms(self.sale_start_ms)
        return body


def iso_of_ms(epoch_ms: int) -> str:
    """RFC 3339 (UTC) of an epoch-milliseconds time, as Tier 2 shows its pre-queue times."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).isoformat()


@dataclass(frozen=True)
class StoredPage:
    """An event's page settings (JSON) and the event's fields its page document names."""

    page_json: str | None
    queue_method: str | None
    updated_at_ms: int
    #: ``(prequeueStart, saleStart)`` in epoch ms when the event has a pre-queue.
    prequeue: tuple[int, int] | None = None


@dataclass(frozen=True)
class Place:
    """One positions row (a place in line)."""

    event_id: str
    request_id: str
    position: int
    epoch: int
    user_id: str | None
    last_seen: int
    expires_at: int
    abandoned: bool
    token: str | None
    token_exp: int | None
    #: When Tier 2 reported the place spent (epoch s): it admitted once, never again.
    spent_at: int | None = None
    #: Random method: the admission sequence number the advancer granted this place.
    grant_seq: int | None = None
    #: Taken during the pre-queue: let in at once (to Tier 2's roster), not by its number.
    prequeue: bool = False

    def current(self, epoch: int, now_s: int) -> bool:
        """Of this run of the room, not expired, not given up, not spent."""
        return (
            self.epoch == epoch
            and self.expires_at > now_s
            and not self.abandoned
            and self.spent_at is None
        )


@dataclass(frozen=True)
class UserClaim:
    owner_request_id: str
    position: int
    epoch: int
    expires_at: int

    def current(self, epoch: int, now_s: int) -> bool:
        return self.epoch == epoch and self.expires_at > now_s

    @property
    def claimed_at_s(self) -> int:
        """When the claim was written (its TTL is set to that time plus the place's)."""
        return self.expires_at - POSITION_TTL_S


#: The most numbers one page of the line reads.
MAX_PAGE = 500
#: DynamoDB's limit of keys per BatchGetItem.
_BATCH_KEYS = 100


def line_order_of(method: QueueMethod) -> str | None:
    """The line order a method needs (``None``: it keeps the line as it is)."""
    if method is QueueMethod.RANDOM:
        return "key"
    if method is QueueMethod.FIFO:
        return "seq"
    return None


def _conditional_failed(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


def _n(item: Item, name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(value["N"]) if value and "N" in value else default


def _s(item: Item, name: str) -> str | None:
    value = item.get(name)
    return value["S"] if value and "S" in value else None


def _event_state(item: Item) -> EventState:
    rate = item.get("admitRate")
    return EventState(
        event_id=_s(item, "eventId") or "",
        is_active=bool(item.get("isActive", {}).get("BOOL", False)),
        next_position=_n(item, "nextPosition"),
        serving_counter=_n(item, "servingCounter"),
        batch_size=_n(item, "batchSize", 1),
        updated_at_ms=_n(item, "updatedAt"),
        epoch=_n(item, "epoch", 1),
        admit_rate=float(rate["N"]) if rate and "N" in rate else None,
        bot_challenge=_s(item, "botChallenge") or "none",
        pow_bits=_n(item, "powBits"),
        queue_method=QueueMethod(_s(item, "queueMethod") or QueueMethod.FIFO.value),
        order_seed=_s(item, "orderSeed"),
        line_floor=_n(item, "lineFloor"),
        line_order=_s(item, "lineOrder") or "seq",
        prequeue_start_ms=_n(item, "prequeueStart") if "prequeueStart" in item else None,
        sale_start_ms=_n(item, "saleStart") if "saleStart" in item else None,
        order_seed_revealed_ms=(
            _n(item, "orderSeedRevealedAt") if "orderSeedRevealedAt" in item else None
        ),
    )


def _place(item: Item) -> Place:
    token_exp = item.get("tokenExp")
    spent_at = item.get("spentAt")
    grant_seq = item.get("grantSeq")
    return Place(
        event_id=_s(item, "eventId") or "",
        request_id=_s(item, "requestId") or "",
        position=_n(item, "position"),
        epoch=_n(item, "epoch", 1),
        user_id=_s(item, "userId"),
        last_seen=_n(item, "lastSeen"),
        expires_at=_n(item, "ttl"),
        abandoned=bool(item.get("abandoned", {}).get("BOOL", False)),
        token=_s(item, "token"),
        token_exp=int(token_exp["N"]) if token_exp and "N" in token_exp else None,
        spent_at=int(spent_at["N"]) if spent_at and "N" in spent_at else None,
        grant_seq=int(grant_seq["N"]) if grant_seq and "N" in grant_seq else None,
        prequeue=bool(item.get("prequeue", {}).get("BOOL", False)),
    )


def _claim(item: Item) -> UserClaim:
    return UserClaim(
        owner_request_id=_s(item, "ownerRequestId") or "",
        position=_n(item, "claimedPosition"),
        epoch=_n(item, "epoch", 1),
        expires_at=_n(item, "ttl"),
    )


def _num(value: int | float) -> dict[str, str]:
    return {"N": str(value)}


class VwrStore:
    """Every DynamoDB read and write of the waiting room; one instance per container."""

    def __init__(
        self,
        client: DynamoDBClient,
        *,
        counters_table: str,
        positions_table: str,
    ) -> None:
        self._db = client
        self.counters_table = counters_table
        self.positions_table = positions_table
        # The line item goes out beside the claim and place writes (``put_place``).
        self._beside = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vwr-line")
        #: False once the endpoint refused TransactWriteItems (dynalite, the local stack's
        #: stand-in): ``put_event`` then makes ordered writes (``_put_event_in_order``).
        self.transactions = True

    # -- events --------------------------------------------------------------------------

    def get_event(self, event_id: str, *, consistent: bool = False) -> EventState | None:
        answer = self._db.get_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": event_id}},
            ConsistentRead=consistent,
        )
        item = answer.get("Item")
        return _event_state(item) if item else None

    def put_event(
        self,
        event_id: str,
        *,
        is_active: bool,
        batch_size: int,
        now_ms: int,
        bot_challenge: tuple[str, int] | None = None,
        queue_method: QueueMethod | None = None,
        order_seed: str | None = None,
        prequeue: tuple[int, int] | None = None,
    ) -> EventState:
        """Create or change an event; the active-event registry changes in the same transaction
        (or, on a stand-in without transactions, in ordered writes: ``_put_event_in_order``).

        ``bot_challenge`` is ``(botChallenge, powBits)`` when the caller changes them;
        ``queue_method`` when it changes; ``order_seed`` is written only if none is stored;
        ``prequeue`` is ``(prequeueStart, saleStart)`` in epoch ms (the caller checked that
        none other is stored).
        """
        challenge_update, challenge_values = "", dict[str, Any]()
        if bot_challenge is not None:
            challenge_update = ", botChallenge = :challenge, powBits = :bits"
            challenge_values = {
                ":challenge": {"S": bot_challenge[0]},
                ":bits": _num(bot_challenge[1]),
            }
        if queue_method is not None:
            challenge_update += ", queueMethod = :method"
            challenge_values[":method"] = {"S": queue_method.value}
            order = line_order_of(queue_method)
            if order is not None:
                challenge_update += ", lineOrder = :order"
                challenge_values[":order"] = {"S": order}
        if prequeue is not None:
            challenge_update += ", prequeueStart = :pqstart, saleStart = :salestart"
            challenge_values[":pqstart"] = _num(prequeue[0])
            challenge_values[":salestart"] = _num(prequeue[1])
        if order_seed is not None:
            challenge_update += ", orderSeed = if_not_exists(orderSeed, :seed)"
            challenge_values[":seed"] = {"S": order_seed}
        event_update: dict[str, Any] = {
            "TableName": self.counters_table,
            "Key": {"eventId": {"S": event_id}},
            "UpdateExpression": (
                "SET isActive = :active, batchSize = :batch, updatedAt = :now, "
                "nextPosition = if_not_exists(nextPosition, :zero), "
                "servingCounter = if_not_exists(servingCounter, :zero), "
                "epoch = if_not_exists(epoch, :one)" + challenge_update
            ),
            "ExpressionAttributeValues": {
                ":active": {"BOOL": is_active},
                ":batch": _num(batch_size),
                ":now": _num(now_ms),
                ":zero": _num(0),
                ":one": _num(1),
                **challenge_values,
            },
        }
        registry_update: dict[str, Any] = {
            "TableName": self.counters_table,
            "Key": {"eventId": {"S": ACTIVE_REGISTRY_ID}},
            "UpdateExpression": "ADD events :set" if is_active else "DELETE events :set",
            "ExpressionAttributeValues": {":set": {"SS": [event_id]}},
        }
        if self.transactions:
            try:
                items: list[Any] = [{"Update": event_update}, {"Update": registry_update}]
                self._db.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "UnknownOperationException":
                    raise
                self.transactions = False
        if not self.transactions:
            self._put_event_in_order(event_id, is_active, event_update, registry_update)
        state = self.get_event(event_id, consistent=True)
        if state is None:  # pragma: no cover - written just above
            raise EventNotFound(event_id)
        return state

    def _put_event_in_order(
        self,
        event_id: str,
        is_active: bool,
        event_update: dict[str, Any],
        registry_update: dict[str, Any],
    ) -> None:
        """``put_event`` without a transaction (dynalite has none), ordered so that once the
        writers are done the registry lists every active event: the edge then gates at worst
        one more event than needed (fails closed), never one fewer.

        Activating: the registry, the event, the registry again (a deactivation that ran
        between the first two deleted the id). Deactivating: the event, the registry, then the
        event read back: an activation that wrote in between gets its id put back. Concurrent
        opposite changes to one event can leave an inactive event listed, which the advancer
        skips and the next change of that event clears.
        """
        add = {**registry_update, "UpdateExpression": "ADD events :set"}
        if is_active:
            self._db.update_item(**add)
            self._db.update_item(**event_update)
            self._db.update_item(**add)
            return
        self._db.update_item(**event_update)
        self._db.update_item(**registry_update)
        now = self.get_event(event_id, consistent=True)
        if now is not None and now.is_active:
            self._db.update_item(**add)

    def reveal_order_seed(self, state: EventState, *, now_ms: int) -> EventState | None:
        """Mark the seed revealed (once) if the event is as ``state`` read it (same
        ``updatedAt``, ``nextPosition``, ``isActive``): the caller checked that line is over
        on that read. ``None`` when the event changed meanwhile."""
        try:
            self._db.update_item(
                TableName=self.counters_table,
                Key={"eventId": {"S": state.event_id}},
                UpdateExpression=(
                    "SET orderSeedRevealedAt = if_not_exists(orderSeedRevealedAt, :now)"
                ),
                ConditionExpression=(
                    "updatedAt = :updated AND nextPosition = :next AND isActive = :active"
                ),
                ExpressionAttributeValues={
                    ":now": _num(now_ms),
                    ":updated": _num(state.updated_at_ms),
                    ":next": _num(state.next_position),
                    ":active": {"BOOL": state.is_active},
                },
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return None
            raise
        return self.get_event(state.event_id, consistent=True)

    def active_event_ids(self) -> list[str]:
        answer = self._db.get_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": ACTIVE_REGISTRY_ID}},
            ConsistentRead=True,
        )
        item = answer.get("Item") or {}
        return sorted(item.get("events", {}).get("SS", []))

    def set_page(self, event_id: str, page_json: str, *, now_ms: int) -> None:
        """Store the operator's waiting-page settings on the event's item (``page``, JSON);
        ``EventNotFound`` when there is no such event (nothing is written then)."""
        try:
            self._db.update_item(
                TableName=self.counters_table,
                Key={"eventId": {"S": event_id}},
                UpdateExpression="SET page = :page, pageUpdatedAt = :now",
                ConditionExpression="attribute_exists(eventId)",
                ExpressionAttributeValues={":page": {"S": page_json}, ":now": _num(now_ms)},
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                raise EventNotFound(event_id) from exc
            raise

    def get_page(self, event_id: str) -> StoredPage | None:
        """What the event's page document is built from, or None when there is no such
        event. ``queueMethod`` is whatever the event's admission settings name (absent: the
        page explains first come, first served)."""
        answer = self._db.get_item(
            TableName=self.counters_table,
            Key={"eventId": {"S": event_id}},
            ConsistentRead=True,
            ProjectionExpression=(
                "eventId, page, queueMethod, pageUpdatedAt, prequeueStart, saleStart"
            ),
        )
        item = answer.get("Item")
        if not item:
            return None
        both = "prequeueStart" in item and "saleStart" in item
        return StoredPage(
            page_json=_s(item, "page"),
            queue_method=_s(item, "queueMethod"),
            updated_at_ms=_n(item, "pageUpdatedAt"),
            prequeue=(_n(item, "prequeueStart"), _n(item, "saleStart")) if both else None,
        )

    def reset_event(self, event_id: str, *, now_ms: int) -> EventState:
        """Start the room over: counters to 0, a new epoch (earlier rows count as gone)."""
        try:
            answer = self._db.update_item(
                TableName=self.counters_table,
                Key={"eventId": {"S": event_id}},
                UpdateExpression=(
                    "SET nextPosition = :zero, servingCounter = :zero, updatedAt = :now, "
                    "epoch = if_not_exists(epoch, :one) + :one, lineFloor = :zero "
                    "REMOVE admitRate, lastAdvanceAt"
                ),
                ConditionExpression="attribute_exists(eventId)",
                ExpressionAttributeValues={":zero": _num(0), ":one": _num(1), ":now": _num(now_ms)},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                raise EventNotFound(event_id) from exc
            raise
        return _event_state(answer["Attributes"])

    # -- assign --------------------------------------------------------------------------

    def read_assignment(
        self, event_id: str, request_id: str, user_id: str | None
    ) -> tuple[EventState | None, Place | None, UserClaim | None]:
        """The event, this request's place and the user's claim, in one BatchGetItem."""
        keys = [{"eventId": {"S": event_id}, "requestId": {"S": request_id}}]
        if user_id:
            keys.append({"eventId": {"S": event_id}, "requestId": {"S": user_claim_key(user_id)}})
        items = self._batch_get(
            {
                self.counters_table: {
                    "Keys": [{"eventId": {"S": event_id}}],
                    "ConsistentRead": True,
                },
                self.positions_table: {"Keys": keys, "ConsistentRead": True},
            }
        )
        state = place = claim = None
        for item in items.get(self.counters_table, []):
            state = _event_state(item)
        for item in items.get(self.positions_table, []):
            if _s(item, "requestId") == request_id:
                place = _place(item)
            else:
                claim = _claim(item)
        return state, place, claim

    def get_place(self, event_id: str, request_id: str) -> Place | None:
        answer = self._db.get_item(
            TableName=self.positions_table,
            Key={"eventId": {"S": event_id}, "requestId": {"S": request_id}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return _place(item) if item else None

    def get_claim(self, event_id: str, user_id: str) -> UserClaim | None:
        answer = self._db.get_item(
            TableName=self.positions_table,
            Key={"eventId": {"S": event_id}, "requestId": {"S": user_claim_key(user_id)}},
            ConsistentRead=True,
        )
        item = answer.get("Item")
        return _claim(item) if item else None

    def reserve_position(self, event_id: str, *, now_ms: int) -> tuple[int, int]:
        """Take the next number (atomic ADD, only while active and, for an event with a
        pre-queue, once it has opened: no number is spent on an assign refused as too early):
        ``(position, epoch)``."""
        state = self.reserve(event_id, now_ms=now_ms)
        return state.next_position, state.epoch

    def reserve(self, event_id: str, *, now_ms: int) -> EventState:
        """``reserve_position`` answering the whole event as the ADD left it: the number taken
        is its ``next_position``. The item comes back from the write itself, so it is as fresh
        as a strongly consistent read (the anonymous assign needs no read of its own)."""
        try:
            answer = self._db.update_item(
                TableName=self.counters_table,
                Key={"eventId": {"S": event_id}},
                UpdateExpression="ADD nextPosition :one SET updatedAt = :now",
                ConditionExpression=(
                    "isActive = :true AND "
                    "(attribute_not_exists(prequeueStart) OR prequeueStart <= :now)"
                ),
                ExpressionAttributeValues={
                    ":one": _num(1),
                    ":now": _num(now_ms),
                    ":true": {"BOOL": True},
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
            if exc.response.get("Item") or self.get_event(event_id, consistent=True):
                raise RoomInactive(event_id) from exc
            raise EventNotFound(event_id) from exc
        return _event_state(answer["Attributes"])

    def reserve_position_beside(self, event_id: str, *, now_ms: int) -> Future[tuple[int, int]]:
        """``reserve_position`` on a side thread, so the caller can read meanwhile."""
        return self._beside.submit(self.reserve_position, event_id, now_ms=now_ms)

    def put_place(
        self,
        event_id: str,
        request_id: str,
        *,
        position: int,
        epoch: int,
        user_id: str | None,
        now_s: int,
        stale_owner: str | None = None,
        prequeue: bool = False,
        fresh_claim: bool = False,
    ) -> bool:
        """Write the new place (and first the user's claim); False when another write won.

        ``fresh_claim``: the claim replaces none that is current (not even one naming this
        request: the caller has not read it), else ``ClaimHeld`` and no place is written.

        The row may replace one of an earlier epoch, an expired one or an abandoned one; the
        claim may replace one of an earlier epoch, an expired one, one naming
        ``stale_owner`` (a place the caller found gone) or one naming this very request (a
        retry after a lost answer).

        Two conditional writes, not a transaction: a transaction buys nothing here that the
        order does not, and moto copies the whole table for every transaction (assigns became
        quadratic in the crowd). The claim goes first, so a second tab of the same user loses
        before it writes a place. If the place write then loses (a racing duplicate of the
        same request id), the claim already names that request id, which holds the place the
        winner wrote. A crash between the two leaves a claim whose owner has no place: the
        next assign finds it gone and takes the claim over as ``stale_owner``.

        The line item is written meanwhile, whatever the place write's outcome: one that names
        a request id whose place holds another number (a lost race) is ignored by the
        advancer, so it needs no ordering and costs the assign no extra round trip.
        """
        line = self._beside.submit(
            self.put_line, event_id, request_id, position=position, epoch=epoch, now_s=now_s
        )
        try:
            if user_id and not self._put_claim(
                event_id,
                request_id,
                user_id,
                position=position,
                epoch=epoch,
                now_s=now_s,
                stale_owner=stale_owner,
                fresh=fresh_claim,
            ):
                if fresh_claim:
                    raise ClaimHeld(user_id)
                return False
            item: dict[str, Any] = {
                "eventId": {"S": event_id},
                "requestId": {"S": request_id},
                "position": _num(position),
                "epoch": _num(epoch),
                "createdAt": _num(now_s),
                "lastSeen": _num(now_s),
                "ttl": _num(now_s + POSITION_TTL_S),
            }
            if user_id:
                item["userId"] = {"S": user_id}
            if prequeue:
                item["prequeue"] = {"BOOL": True}
            try:
                self._db.put_item(
                    TableName=self.positions_table,
                    Item=item,
                    ConditionExpression=(
                        "attribute_not_exists(requestId) OR epoch < :epoch OR #ttl < :now "
                        "OR abandoned = :true"
                    ),
                    ExpressionAttributeNames={"#ttl": "ttl"},
                    ExpressionAttributeValues={
                        ":epoch": _num(epoch),
                        ":now": _num(now_s),
                        ":true": {"BOOL": True},
                    },
                )
            except ClientError as exc:
                if _conditional_failed(exc):
                    return False
                raise
            return True
        finally:
            line.result()

    def put_line(
        self, event_id: str, request_id: str, *, position: int, epoch: int, now_s: int
    ) -> None:
        """Put number ``position`` on the line, naming its request id (one number, one owner).

        A failure of this write alone leaves a place without a line item: the advancer passes
        its number as it does one burnt by a racing assign, and the waiter is admitted with the
        places around it without counting against the budget.
        """
        self._db.put_item(
            TableName=self.positions_table,
            Item={
                "eventId": {"S": event_id},
                "requestId": {"S": line_key(epoch, position)},
                "ownerRequestId": {"S": request_id},
                "epoch": _num(epoch),
                "ttl": _num(now_s + POSITION_TTL_S),
            },
        )

    def _put_claim(
        self,
        event_id: str,
        request_id: str,
        user_id: str,
        *,
        position: int,
        epoch: int,
        now_s: int,
        stale_owner: str | None,
        fresh: bool = False,
    ) -> bool:
        """Put the user's claim naming ``request_id``; False when a current claim stands.

        It replaces a claim of an earlier epoch or expired, and unless ``fresh`` one naming
        this request or ``stale_owner``."""
        condition = "attribute_not_exists(requestId) OR epoch < :epoch OR #ttl < :now"
        values: dict[str, Any] = {":epoch": _num(epoch), ":now": _num(now_s)}
        if not fresh:
            condition += " OR ownerRequestId = :me"
            values[":me"] = {"S": request_id}
        if stale_owner and not fresh:
            condition += " OR ownerRequestId = :stale"
            values[":stale"] = {"S": stale_owner}
        try:
            self._db.put_item(
                TableName=self.positions_table,
                Item={
                    "eventId": {"S": event_id},
                    "requestId": {"S": user_claim_key(user_id)},
                    "ownerRequestId": {"S": request_id},
                    "claimedPosition": _num(position),
                    "epoch": _num(epoch),
                    "ttl": _num(now_s + POSITION_TTL_S),
                },
                ConditionExpression=condition,
                ExpressionAttributeNames={"#ttl": "ttl"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    # -- check ---------------------------------------------------------------------------

    def read_check(self, event_id: str, request_id: str) -> tuple[EventState | None, Place | None]:
        """The event (eventually consistent) and the place (strongly consistent), one call."""
        items = self._batch_get(
            {
                self.counters_table: {
                    "Keys": [{"eventId": {"S": event_id}}],
                    "ConsistentRead": False,
                },
                self.positions_table: {
                    "Keys": [{"eventId": {"S": event_id}, "requestId": {"S": request_id}}],
                    "ConsistentRead": True,
                },
            }
        )
        counters = items.get(self.counters_table, [])
        places = items.get(self.positions_table, [])
        return (
            _event_state(counters[0]) if counters else None,
            _place(places[0]) if places else None,
        )

    def touch(self, place: Place, *, now_s: int) -> bool:
        """Record a check; False when the advancer marked the place abandoned meanwhile."""
        try:
            self._db.update_item(
                TableName=self.positions_table,
                Key={"eventId": {"S": place.event_id}, "requestId": {"S": place.request_id}},
                UpdateExpression="SET lastSeen = :now",
                ConditionExpression="epoch = :epoch AND attribute_not_exists(abandoned)",
                ExpressionAttributeValues={":now": _num(now_s), ":epoch": _num(place.epoch)},
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def record_admission(
        self, place: Place, *, token: str, token_exp: int, now_s: int
    ) -> Place | None:
        """Store the admission token once; the stored place, or None if the place is gone.

        Two checks racing both sign a token but only one is stored; the loser answers with the
        winner's, so a waiter sees one token. A spent place never gets a token: the stored
        place comes back with ``spent_at`` set, for the caller to refuse.
        """
        key = {"eventId": {"S": place.event_id}, "requestId": {"S": place.request_id}}
        try:
            answer = self._db.update_item(
                TableName=self.positions_table,
                Key=key,
                UpdateExpression=(
                    "SET #token = :token, tokenExp = :exp, lastSeen = :now, "
                    "admittedAt = if_not_exists(admittedAt, :now)"
                ),
                ConditionExpression=(
                    "epoch = :epoch AND attribute_not_exists(abandoned) AND "
                    "attribute_not_exists(spentAt) AND "
                    "(attribute_not_exists(#token) OR tokenExp < :now)"
                ),
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={
                    ":token": {"S": token},
                    ":exp": _num(token_exp),
                    ":now": _num(now_s),
                    ":epoch": _num(place.epoch),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if not _conditional_failed(exc):
                raise
            stored = self.get_place(place.event_id, place.request_id)
            if stored is None or stored.epoch != place.epoch:
                return None
            return stored if stored.token or stored.spent_at is not None else None
        return _place(answer["Attributes"])

    # -- advancing -----------------------------------------------------------------------

    def places_above(
        self, state: EventState, *, upto: int, now_s: int, page_size: int = MAX_PAGE
    ) -> Iterator[PositionRow]:
        """Current places numbered ``servingCounter+1 .. upto``, in order, read by key.

        A page is ``page_size`` numbers (the caller sizes it to what it will read): their line
        items, then the places they name, each in BatchGetItems of at most 100 keys and with
        only the attributes the walk needs. A number without a line item, or whose place is
        gone, given up or of another run, yields nothing.
        """
        low = state.serving_counter + 1
        page = max(1, min(page_size, MAX_PAGE))
        while low <= upto:
            high = min(upto, low + page - 1)
            owners = self._line_owners(state, range(low, high + 1))
            places = self._line_places(state.event_id, owners.values())
            for position in sorted(owners):
                item = places.get(owners[position])
                if item is None or _n(item, "position") != position:
                    continue
                if _n(item, "epoch") != state.epoch or _n(item, "ttl") <= now_s:
                    continue
                if "abandoned" in item:
                    continue
                yield PositionRow(
                    request_id=owners[position],
                    position=position,
                    last_seen=_n(item, "lastSeen"),
                    admitted="admittedAt" in item,
                    granted="grantedAt" in item,
                    prequeue="prequeue" in item,
                )
            low = high + 1

    def _line_owners(self, state: EventState, positions: range) -> dict[int, str]:
        """``{position: request id}`` of the line items of ``positions`` that exist."""
        keys = [
            {"eventId": {"S": state.event_id}, "requestId": {"S": line_key(state.epoch, p)}}
            for p in positions
        ]
        owners: dict[int, str] = {}
        for item in self._get_many(keys, "requestId, ownerRequestId"):
            owner = _s(item, "ownerRequestId")
            key = _s(item, "requestId") or ""
            if owner:
                owners[int(key.rpartition("#")[2])] = owner
        return owners

    def _line_places(self, event_id: str, request_ids: Iterable[str]) -> dict[str, Item]:
        keys = [{"eventId": {"S": event_id}, "requestId": {"S": r}} for r in set(request_ids)]
        projection = (
            "requestId, #pos, epoch, #ttl, lastSeen, admittedAt, grantedAt, abandoned, prequeue"
        )
        return {
            _s(item, "requestId") or "": item
            for item in self._get_many(keys, projection, {"#pos": "position", "#ttl": "ttl"})
        }

    def _get_many(
        self,
        keys: list[dict[str, Any]],
        projection: str,
        names: dict[str, str] | None = None,
    ) -> list[Item]:
        """Strongly consistent reads of ``keys`` in the positions table, 100 per call."""
        found: list[Item] = []
        for start in range(0, len(keys), _BATCH_KEYS):
            request: dict[str, Any] = {
                "Keys": keys[start : start + _BATCH_KEYS],
                "ConsistentRead": True,
                "ProjectionExpression": projection,
            }
            if names:
                request["ExpressionAttributeNames"] = names
            found.extend(
                self._batch_get({self.positions_table: request}).get(self.positions_table, [])
            )
        return found

    def mark_abandoned(self, state: EventState, row: PositionRow, *, cutoff_s: int) -> bool:
        """Flag a place whose checks stopped; False if its waiter checked in meanwhile."""
        try:
            self._db.update_item(
                TableName=self.positions_table,
                Key={"eventId": {"S": state.event_id}, "requestId": {"S": row.request_id}},
                UpdateExpression="SET abandoned = :true",
                ConditionExpression=(
                    "epoch = :epoch AND lastSeen < :cutoff AND attribute_not_exists(admittedAt) "
                    "AND attribute_not_exists(grantedAt)"
                ),
                ExpressionAttributeValues={
                    ":true": {"BOOL": True},
                    ":epoch": _num(state.epoch),
                    ":cutoff": _num(cutoff_s),
                },
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    def advance_to(
        self,
        state: EventState,
        *,
        serving_counter: int,
        admit_rate: float | None,
        now_ms: int,
        line_floor: int | None = None,
    ) -> EventState:
        """Compare-and-set the serving counter; never beyond ``nextPosition``."""
        update = "SET servingCounter = :new, lastAdvanceAt = :now, updatedAt = :now"
        if line_floor is not None:
            update += ", lineFloor = :floor"
        values: dict[str, Any] = {
            ":new": _num(serving_counter),
            ":old": _num(state.serving_counter),
            ":epoch": _num(state.epoch),
            ":now": _num(now_ms),
        }
        if line_floor is not None:
            values[":floor"] = _num(line_floor)
        if admit_rate is not None:
            update += ", admitRate = :rate"
            values[":rate"] = _num(round(admit_rate, 3))
        try:
            answer = self._db.update_item(
                TableName=self.counters_table,
                Key={"eventId": {"S": state.event_id}},
                UpdateExpression=update,
                ConditionExpression=(
                    "servingCounter = :old AND epoch = :epoch AND nextPosition >= :new"
                ),
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                raise StaleCounter(state.event_id) from exc
            raise
        return _event_state(answer["Attributes"])

    def grant(self, state: EventState, row: PositionRow, *, seq: int, now_s: int) -> bool:
        """Random method: admit this place as the ``seq``-th; False if it was given up."""
        try:
            self._db.update_item(
                TableName=self.positions_table,
                Key={"eventId": {"S": state.event_id}, "requestId": {"S": row.request_id}},
                UpdateExpression="SET grantedAt = :now, grantSeq = :seq",
                ConditionExpression=(
                    "epoch = :epoch AND #pos = :pos AND attribute_not_exists(abandoned) "
                    "AND attribute_not_exists(grantedAt)"
                ),
                ExpressionAttributeNames={"#pos": "position"},
                ExpressionAttributeValues={
                    ":now": _num(now_s),
                    ":seq": _num(seq),
                    ":epoch": _num(state.epoch),
                    ":pos": _num(row.position),
                },
            )
        except ClientError as exc:
            if _conditional_failed(exc):
                return False
            raise
        return True

    # -- helpers -------------------------------------------------------------------------

    def batch_get(self, request: dict[str, Any]) -> dict[str, list[Item]]:
        """``_batch_get`` for the gates' adapter (``urr_vwr_lambda.gates.store``)."""
        return self._batch_get(request)

    def _batch_get(self, request: dict[str, Any]) -> dict[str, list[Item]]:
        """BatchGetItem, retrying unprocessed keys (throttling) a few times."""
        found: dict[str, list[Item]] = {}
        pending = request
        for attempt in range(5):
            answer = self._db.batch_get_item(RequestItems=pending)
            for table, items in answer.get("Responses", {}).items():
                found.setdefault(table, []).extend(items)
            pending = answer.get("UnprocessedKeys") or {}
            if not pending:
                return found
            time.sleep(0.01 * 2**attempt)
        raise RuntimeError("DynamoDB left keys unprocessed after retries")
