"""The Redis side of the queue: one atomic Lua script per operation, typed results.

Each script works on one event's keys (one hash tag, one cluster slot). Revocations are
written to the user's own slot with a plain ``SET`` after the event's script has run.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from urr_common.fairness import QueueMethod
from urr_common.resp import RespLane
from urr_queue.config import EventConfig, Mode
from urr_queue.estimates import admission_rate
from urr_queue.keys import EVENTS_SET, OUTBOXES_SET, EventKeys, event_keys, revoked_key
from urr_queue.members import decode_member, encode_member

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    RedisClient = Redis | RedisCluster


#: Most ``EVALSHA`` heads kept (scripts x events); past it the cache starts over.
_MAX_HEADS = 4096


def _script_text(name: str) -> str:
    folder = resources.files("urr_queue") / "lua"
    common = (folder / "_common.lua").read_text(encoding="utf-8")
    return common + "\n" + (folder / name).read_text(encoding="utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _optional_int(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text else None


def _rate(value: Any) -> float | None:
    milli = _optional_int(value)
    return None if milli is None else milli / 1000


class Refusal(StrEnum):
    """Why a visit to the queue got no place."""

    NO_EVENT = "no_event"
    CLOSED = "closed"
    #: The event's queueing method is ``reject``: nobody waits (sold out / closed).
    REJECTED = "rejected"
    #: The event's pre-queue has not opened yet.
    PREQUEUE_NOT_OPEN = "prequeue_not_open"
    TIER1_REQUIRED = "tier1_required"
    #: The Tier-1 place is bound to another user (the first who entered with it).
    TIER1_PASS_BOUND = "tier1_pass_bound"  # noqa: S105 (a refusal code, not a secret)
    #: The Tier-1 place already admitted its user once, and that stay is over.
    TIER1_PASS_SPENT = "tier1_pass_spent"  # noqa: S105 (a refusal code, not a secret)
    #: Pre-queue events behind Tier 1: a pass signed before the pre-queue opened.
    TIER1_PASS_STALE = "tier1_pass_stale"  # noqa: S105 (a refusal code, not a secret)
    #: ... a pass that does not fit the pre-queue (another sale start, or a numbered pass
    #: before the sale started).
    TIER1_PASS_MISMATCH = "tier1_pass_mismatch"  # noqa: S105 (a refusal code, not a secret)
    #: ... a pre-queue pass brought after sale start by someone not on the roster (spent).
    PREQUEUE_CLOSED = "prequeue_closed"
    NOT_QUEUED = "not_queued"


@dataclass(frozen=True)
class Waiting:
    rank: int  # 0-based: how many are ahead
    queue_size: int
    measured_rate: float | None  # admissions per second, as the ticks measured it
    now_ms: int
    entered: bool  # this call took the place
    number: int  # queue number: arrival sequence or signed Tier-1 position
    mode: Mode
    capacity: int
    admit_per_second: float
    session_seconds: int
    idle_timeout_seconds: int
    tier1_required: bool
    queue_method: QueueMethod = QueueMethod.FIFO
    #: The ``ticket`` the admission log will name this stay's admission by (its receipt).
    logged_ticket: int | None = None

    @property
    def position(self) -> int:
        return self.rank + 1


@dataclass(frozen=True)
class Rostered:
    """On the pre-queue's roster: the place is drawn at sale start (``member_id`` is the
    salted hash published in the roster, by which the user finds and proves the entry)."""

    member_id: str
    roster_size: int
    sale_start_ms: int
    now_ms: int
    entered: bool
    number: int
    #: SHA-256 of the operator's secret, fixed before the pre-queue opened.
    commitment: str = ""


@dataclass(frozen=True)
class Admitted:
    session_end_ms: int
    token: str | None  # the token already issued for this admission, if any
    now_ms: int
    newly_admitted: bool  # admitted by this very call (passthrough)
    entered: bool  # ... and it took its place with this call too
    queue_size: int
    number: int  # -1 when not known
    tier1_required: bool


@dataclass(frozen=True)
class TickResult:
    event_id: str
    now_ms: int
    active: int
    waiting: int
    admitted: list[tuple[str, int]]  # (user id, queue number) in admission order
    expired: list[str]
    dropped: list[tuple[str, int]]
    #: Tier-1 order (events behind a Tier-1 room only): whether free slots were held for a
    #: lower number still on its way, and how many missing numbers were given up.
    order_held: bool = False
    order_waived: int = 0
    #: The Tier-1 numbers given up this tick (``order_waived`` of them), lowest first.
    waived_numbers: tuple[int, ...] = ()
    #: The admission outbox was at its cap: this tick admitted and waived nobody.
    outbox_full: bool = False


@dataclass(frozen=True)
class Left:
    """What ``leave`` ended: a waiting place, an admitted session, or nothing."""

    was: str  # "waiting" | "admitted" | "none"
    now_ms: int = 0
    rank: int = -1
    number: int = -1
    session_end_ms: int = 0
    token: str | None = None


def _left(reply: Any) -> Left | None:
    """``leave.lua``'s reply."""
    kind = _text(reply[0])
    if kind == "no_event":
        return None
    if kind == "waiting":
        return Left("waiting", now_ms=int(reply[3]), rank=int(reply[1]), number=int(reply[2]))
    if kind == "admitted":
        token = _text(reply[2])
        return Left(
            "admitted", now_ms=int(reply[3]), session_end_ms=int(reply[1]), token=token or None
        )
    return Left("none")


@dataclass(frozen=True)
class Figures:
    config: EventConfig
    waiting: int
    admitted: int
    admitted_last_minute: int
    oldest_wait_ms: int | None
    measured_rate: float | None
    now_ms: int
    #: Tier-1 order: every number below the cursor arrived or was waived; when the admission
    #: of those waiting is held for a lower number still on its way, since when (ms).
    order_cursor: int | None = None
    order_hold_since_ms: int | None = None

    def expected_rate(self) -> float | None:
        """Admissions per second to expect now (None while the event admits nobody)."""
        config = self.config
        return admission_rate(
            self.measured_rate,
            mode=config.mode,
            capacity=config.capacity,
            admit_per_second=config.admit_per_second,
            session_seconds=config.session_seconds,
        )


class QueueStore:
    """Queue operations on one Redis (or Redis Cluster) client."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        heartbeat_bucket_ms: int = 5_000,
        max_in_flight: int = 64,
        lane_timeout_s: float | None = None,
    ) -> None:
        """``lane_timeout_s``: the scripts and the revocation go over one pipelined
        connection of ``redis`` (``urr_common.resp.RespLane``, that timeout its
        ``socket_timeout``) instead of through redis-py's commands; a single Redis only (a
        cluster client keeps redis-py)."""
        self.redis = redis
        #: A Redis Cluster client: a user's keys and an event's may live on different nodes.
        self._cluster = isinstance(redis, RedisCluster)
        #: Encoded ``EVALSHA`` heads by script digest and keys (``_evalsha``).
        self._heads: dict[tuple[str, ...], bytes] = {}
        self._lane = (
            RespLane(redis, timeout_s=lane_timeout_s)
            if lane_timeout_s is not None and not isinstance(redis, RedisCluster)
            else None
        )
        self.heartbeat_bucket_ms = heartbeat_bucket_ms
        # redis-py pools raise instead of waiting once every connection is busy; a burst of
        # requests waits here for its turn instead of failing.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        #: Passthrough admissions write their ``admitted`` record into the event's outbox
        #: (``visit.lua``; on where a relay runs: ``app.py``).
        self.outbox_records = False
        self._visit = redis.register_script(_script_text("visit.lua"))
        self._tick = redis.register_script(_script_text("tick.lua"))
        self._leave = redis.register_script(_script_text("leave.lua"))
        self._store_token = redis.register_script(_script_text("store_token.lua"))
        self._current_token = redis.register_script(_script_text("current_token.lua"))
        self._figures = redis.register_script(_script_text("figures.lua"))
        self._configure = redis.register_script(_script_text("configure.lua"))
        self._forget = redis.register_script(_script_text("forget.lua"))
        self._prequeue_reveal = redis.register_script(_script_text("prequeue_reveal.lua"))
        self._order_seed_reveal = redis.register_script(_script_text("order_seed_reveal.lua"))

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | bytes]) -> Any:
        lane = self._lane
        async with self._in_flight:
            if lane is None:
                return await script(keys=keys, args=args)
            try:
                return await lane.call(self._evalsha(lane, script, keys, args))
            except NoScriptError:
                # Redis lost its scripts (a restart): redis-py's script object loads it again.
                return await script(keys=keys, args=args)

    def _evalsha(
        self, lane: RespLane, script: AsyncScript, keys: list[str], args: list[str | bytes]
    ) -> bytes:
        """``EVALSHA`` of ``script``: its name, digest and keys encoded once per script and
        key list (an event's 19 keys), its arguments each time."""
        known = (script.sha, *keys)
        head = self._heads.get(known)
        if head is None:
            if len(self._heads) >= _MAX_HEADS:
                self._heads.clear()
            head = self._heads[known] = lane.arguments("EVALSHA", script.sha, len(keys), *keys)
        return lane.command_from(head, 3 + len(keys), *args)

    async def aclose(self) -> None:
        """Give back the lane's connection (closing the client closes it too)."""
        if self._lane is not None:
            await self._lane.aclose()

    @staticmethod
    def _call_keys(event_id: str) -> tuple[list[str], EventKeys]:
        keys = event_keys(event_id)
        return keys.as_list(), keys

    # -- configuration -----------------------------------------------------------------

    async def configure(
        self,
        event_id: str,
        config: EventConfig,
        *,
        seed: str | None = None,
        prequeue_salt: str | None = None,
    ) -> str:
        """Write ``config``; ``"created"``, ``"updated"``, ``"queue_not_empty"`` or
        ``"order_seed_revealed"`` (the random method after the seed was revealed).

        ``seed`` (hex) is the random method's seed, ``prequeue_salt`` (hex) the key of the
        roster's hashed ids; each is stored only if the event has none yet.
        """
        key_list, keys = self._call_keys(event_id)
        args: list[str | bytes] = [keys.seen_prefix, str(self.heartbeat_bucket_ms)]
        for field, value in config.to_redis().items():
            args += [field, value]
        if seed is not None:
            args += ["order_seed", seed]
        if prequeue_salt is not None:
            args += ["prequeue_salt", prequeue_salt]
        reply = await self._run(self._configure, key_list, args)
        outcome = _text(reply[0])
        if outcome in ("created", "updated"):
            # After the config exists, so the loop never finds an event without one.
            await self.redis.sadd(EVENTS_SET, event_id)
            await self.redis.sadd(OUTBOXES_SET, event_id)
        return outcome

    async def get_config(self, event_id: str) -> EventConfig | None:
        fields = await self.redis.hgetall(event_keys(event_id).config)
        return EventConfig.from_redis(fields) if fields else None

    async def order_seed(self, event_id: str) -> str | None:
        """The random method's seed (hex) of the event, if it has one."""
        return await self._config_field(event_id, "order_seed")

    async def random_order_seed(self, event_id: str) -> bytes | None:
        """The seed Tier 2 draws order keys from, when this event's line is ordered by them
        (the random method without a Tier-1 room: there the room's numbers order the line)."""
        order, method, tier1, seed = await self.redis.hmget(
            event_keys(event_id).config,
            ["queue_order", "queue_method", "require_tier1", "order_seed"],
        )
        # Ordered by key: the random method, or passthrough / reject after it (they keep the
        # order they found). A pre-queue orders by score too, but only with the fifo method.
        if order is None or _text(order) != "key" or seed is None or method is None:
            return None
        if _text(method) == QueueMethod.FIFO.value:
            return None
        if tier1 is not None and _text(tier1) == "1":
            return None
        return bytes.fromhex(_text(seed))

    async def order_seed_revealed(self, event_id: str) -> bool:
        return await self._config_field(event_id, "order_seed_revealed_ms") is not None

    async def reveal_order_seed(self, event_id: str) -> list[str]:
        """``order_seed_reveal.lua``'s reply, as text."""
        key_list, keys = self._call_keys(event_id)
        reply = await self._run(self._order_seed_reveal, key_list, [keys.seen_prefix])
        return [_text(item) if isinstance(item, bytes) else str(item) for item in reply]

    async def prequeue_salt(self, event_id: str) -> str | None:
        """The key of the roster's hashed ids (hex), once the event has a pre-queue."""
        return await self._config_field(event_id, "prequeue_salt")

    async def _config_field(self, event_id: str, name: str) -> str | None:
        value = await self.redis.hget(event_keys(event_id).config, name)
        return None if value is None else _text(value)

    async def event_ids(self) -> list[str]:
        return sorted(_text(member) for member in await self.redis.smembers(EVENTS_SET))

    async def forget_event(self, event_id: str) -> None:
        await self.redis.srem(EVENTS_SET, event_id)

    async def delete_event(self, event_id: str) -> list[tuple[str, str]] | None:
        """Delete the event's keys; the (user id, token) pairs still issued, or ``None``."""
        key_list, keys = self._call_keys(event_id)
        reply = await self._run(self._forget, key_list, [keys.seen_prefix])
        if _text(reply[0]) != "ok":
            return None
        await self.forget_event(event_id)
        flat = reply[1]
        return [
            (decode_member(member), _text(token))
            for member, token in zip(flat[::2], flat[1::2], strict=True)
        ]

    # -- the user's calls ----------------------------------------------------------------

    async def visit(
        self,
        event_id: str,
        user_id: str,
        *,
        enter: bool,
        tier1_position: int | None = None,
        tier1_place: str = "",
        tier1_prequeue_sale_ms: int | None = None,
        tier1_issued_at: int = 0,
    ) -> Waiting | Admitted | Rostered | Refusal:
        """Enter or poll; ``tier1_place`` is ``Tier1Pass.place`` of a verified pass, the last
        two its pre-queue claim and signing time (``Tier1Pass``)."""
        key_list, keys = self._call_keys(event_id)
        args: list[str | bytes] = [
            keys.seen_prefix,
            encode_member(user_id),
            "" if tier1_position is None else str(tier1_position),
            tier1_place,
            "1" if enter else "0",
            user_id,
            "" if tier1_prequeue_sale_ms is None else str(tier1_prequeue_sale_ms),
            str(tier1_issued_at),
            uuid.uuid4().hex if self.outbox_records else "",
            "1" if self.outbox_records else "0",
        ]
        reply = await self._run(self._visit, key_list, args)
        kind = _text(reply[0])
        if kind == "prequeue":
            return Rostered(
                member_id=_text(reply[1]),
                roster_size=int(reply[2]),
                sale_start_ms=int(reply[3]),
                now_ms=int(reply[4]),
                entered=bool(int(reply[5])),
                number=int(reply[6]),
                commitment=_text(reply[7]),
            )
        if kind == "admitted":
            token = _text(reply[2])
            return Admitted(
                session_end_ms=int(reply[1]),
                token=token or None,
                now_ms=int(reply[3]),
                newly_admitted=int(reply[4]) > 0,
                entered=int(reply[4]) == 2,
                queue_size=int(reply[5]),
                number=int(reply[6]),
                tier1_required=bool(int(reply[7])),
            )
        if kind == "waiting":
            return Waiting(
                rank=int(reply[1]),
                queue_size=int(reply[2]),
                measured_rate=_rate(reply[3]),
                now_ms=int(reply[4]),
                entered=bool(int(reply[5])),
                number=int(reply[6]),
                mode=Mode(_text(reply[7])),
                capacity=int(reply[8]),
                admit_per_second=float(_text(reply[9])),
                session_seconds=int(reply[10]) // 1000,
                idle_timeout_seconds=int(reply[11]) // 1000,
                tier1_required=bool(int(reply[12])),
                queue_method=QueueMethod(_text(reply[13])),
                logged_ticket=int(float(_text(reply[14]))) if len(reply) > 14 else None,
            )
        return Refusal(kind)

    # -- the pre-queue -------------------------------------------------------------------

    async def roster(self, event_id: str) -> list[str]:
        """The roster's hashed ids in join order (frozen once the sale has started)."""
        found = await self.redis.lrange(event_keys(event_id).roster, 0, -1)
        return [_text(item) for item in found]

    async def roster_not_placed(self, event_id: str) -> int:
        """Roster members still waiting outside the queue for the reveal (0 after it)."""
        keys = event_keys(event_id)
        if _text(await self.redis.hget(keys.stats, "prequeue_revealed") or b"") == "1":
            return 0
        return int(await self.redis.llen(keys.roster))

    async def redis_now_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def prequeue_document(self, event_id: str) -> bytes | None:
        """The document published at the reveal, if the reveal has begun."""
        value = await self.redis.get(event_keys(event_id).prequeue_doc)
        return None if value is None else _raw(value)

    async def keep_prequeue_document(self, event_id: str, document: bytes) -> bytes:
        """Store the reveal's document once; the one that counts (an earlier reveal's)."""
        key = event_keys(event_id).prequeue_doc
        await self.redis.set(key, document, nx=True)
        return _raw(await self.redis.get(key))

    async def place_roster(self, event_id: str, order: list[str], *, chunk: int = 1000) -> bool:
        """Put the shuffled roster in line (ranks 1..n) and open admission; False if it was
        revealed before (nothing is placed twice)."""
        key_list, keys = self._call_keys(event_id)
        for start in range(0, max(1, len(order)), chunk):
            part = order[start : start + chunk]
            final = start + chunk >= len(order)
            args: list[str | bytes] = [keys.seen_prefix, str(start + 1), "1" if final else "0"]
            reply = await self._run(self._prequeue_reveal, key_list, [*args, *part])
            if _text(reply[0]) != "placed":
                return False
        return True

    async def keep_token(
        self, event_id: str, user_id: str, session_end_ms: int, token: str
    ) -> str | None:
        """Store ``token`` for this admission unless one is stored; the one that counts."""
        key_list, keys = self._call_keys(event_id)
        args: list[str | bytes] = [
            keys.seen_prefix,
            encode_member(user_id),
            str(session_end_ms),
            token,
        ]
        stored = await self._run(self._store_token, key_list, args)
        return _text(stored) if stored else None

    async def current_token(self, event_id: str, user_id: str) -> tuple[str | None, int]:
        """The user's stored entry token for this event (or ``None``) and Redis's time (ms)."""
        key_list, keys = self._call_keys(event_id)
        args: list[str | bytes] = [keys.seen_prefix, encode_member(user_id)]
        stored, now_ms = await self._run(self._current_token, key_list, args)
        return (_text(stored) if stored else None), int(now_ms)

    async def leave(self, event_id: str, user_id: str, *, only_admitted: bool) -> Left | None:
        """End the user's place or session; ``None`` when the event does not exist."""
        key_list, args = self._leave_call(event_id, user_id, only_admitted=only_admitted)
        return _left(await self._run(self._leave, key_list, args))

    async def revoke_and_leave(
        self, event_id: str, user_id: str, jti: str, ttl_ms: int, *, only_admitted: bool
    ) -> Left | None:
        """``revoke`` then ``leave``, in this order, as one round trip where one server runs
        both (a pipeline: Redis runs a connection's commands in the order sent, so the slot is
        never free while the token still opens the booking APIs). On a Redis Cluster the two
        keys live in different slots, maybe on different nodes: there the two calls follow
        each other as before."""
        if self._cluster or ttl_ms <= 0:
            await self.revoke(user_id, jti, ttl_ms)
            return await self.leave(event_id, user_id, only_admitted=only_admitted)
        key_list, args = self._leave_call(event_id, user_id, only_admitted=only_admitted)
        lane = self._lane
        if lane is not None:
            revocation = lane.command("SET", revoked_key(user_id, jti), b"1", "PX", ttl_ms)
            leave = self._evalsha(lane, self._leave, key_list, args)
            async with self._in_flight:
                revoked, left = await lane.call_many(revocation + leave, 2)
            if isinstance(revoked, Exception):
                raise revoked
            if isinstance(left, NoScriptError):
                # Redis lost its scripts (a restart): the revocation is set, leave as above.
                return await self.leave(event_id, user_id, only_admitted=only_admitted)
            if isinstance(left, Exception):
                raise left
            return _left(left)
        async with self._in_flight, self.redis.pipeline(transaction=False) as pipe:
            pipe.set(revoked_key(user_id, jti), b"1", px=ttl_ms)
            pipe.evalsha(self._leave.sha, len(key_list), *key_list, *args)
            try:
                replies = await pipe.execute()
            except NoScriptError:
                replies = None  # Redis lost its scripts (a restart): the revocation is set
        if replies is None:
            return await self.leave(event_id, user_id, only_admitted=only_admitted)
        return _left(replies[1])

    def _leave_call(
        self, event_id: str, user_id: str, *, only_admitted: bool
    ) -> tuple[list[str], list[str | bytes]]:
        key_list, keys = self._call_keys(event_id)
        args: list[str | bytes] = [
            keys.seen_prefix,
            encode_member(user_id),
            "1" if only_admitted else "0",
        ]
        return key_list, args

    async def unmarked_places(self, event_id: str, limit: int) -> list[tuple[str, int]]:
        """Spent Tier-1 places (place, ms spent) the Tier-1 table lacks yet, oldest first."""
        found = await self.redis.zrange(
            event_keys(event_id).unmarked, 0, limit - 1, withscores=True
        )
        return [(_text(entry[0]), int(entry[1])) for entry in found]

    async def places_marked(self, event_id: str, places: list[str]) -> None:
        """Take places the Tier-1 table now knows are spent off the outbox."""
        if places:
            await self.redis.zrem(event_keys(event_id).unmarked, *places)

    async def spent_at(self, event_id: str, place: str) -> int | None:
        """When a Tier-1 place was spent (ms), or ``None`` while it may still admit."""
        value = await self.redis.hget(event_keys(event_id).spent, place)
        return None if value is None else int(_text(value))

    async def append_outbox(self, event_id: str, records: list[dict[str, Any]]) -> bool:
        """Put ready-made ``queue-events`` records into the event's outbox (the pre-queue's
        publications: few, never refused at the cap); ``False`` when no relay runs."""
        if not self.outbox_records:
            return False
        outbox = event_keys(event_id).outbox
        for record in records:
            await self.redis.xadd(outbox, {"json": orjson.dumps(record)})
        return True

    async def revoke(self, user_id: str, jti: str, ttl_ms: int) -> None:
        """Tell the gateway this token's ``jti`` is no longer good (for ``ttl_ms``)."""
        if ttl_ms > 0:
            await self.redis.set(revoked_key(user_id, jti), b"1", px=ttl_ms)

    # -- the admission loop and the figures ----------------------------------------------

    async def tick(
        self,
        event_id: str,
        *,
        max_admit: int,
        max_scan: int,
        max_expire: int,
        order_grace_ms: int = 0,
        outbox_cap: int = 0,
    ) -> TickResult | None:
        """One admission tick; ``None`` when the event has no configuration any more.

        ``order_grace_ms`` > 0 keeps a Tier-1 event's admissions in number order, holding
        free slots up to that long for a lower number still on its way (``tick.lua``).
        ``outbox_cap`` > 0 writes the tick's ``waived`` and ``admitted`` records into the
        event's outbox in the same script (``outbox.py`` relays them), and admits nobody
        while the outbox holds that many; 0 writes no records.
        """
        key_list, keys = self._call_keys(event_id)
        args: list[str | bytes] = [
            keys.seen_prefix,
            str(max_admit),
            str(max_scan),
            str(max_expire),
            str(order_grace_ms),
            uuid.uuid4().hex,
            str(outbox_cap),
        ]
        reply = await self._run(self._tick, key_list, args)
        if int(reply[0]) < 0:
            return None
        admitted_members, admitted_numbers = reply[3], reply[4]
        dropped_members, dropped_numbers = reply[6], reply[7]
        return TickResult(
            event_id=event_id,
            now_ms=int(reply[0]),
            active=int(reply[1]),
            waiting=int(reply[2]),
            admitted=[
                (decode_member(m), int(float(_text(n))))
                for m, n in zip(admitted_members, admitted_numbers, strict=True)
            ],
            expired=[decode_member(m) for m in reply[5]],
            dropped=[
                (decode_member(m), int(float(_text(n))))
                for m, n in zip(dropped_members, dropped_numbers, strict=True)
            ],
            order_held=bool(int(reply[8])),
            order_waived=int(reply[9]),
            waived_numbers=tuple(int(n) for n in reply[10]),
            outbox_full=bool(int(reply[11])),
        )

    async def figures(self, event_id: str) -> Figures | None:
        key_list, keys = self._call_keys(event_id)
        reply = await self._run(self._figures, key_list, [keys.seen_prefix])
        if _text(reply[0]) != "ok":
            return None
        flat = reply[7]
        config = EventConfig.from_redis(dict(zip(flat[::2], flat[1::2], strict=True)))
        oldest = int(reply[4])
        return Figures(
            config=config,
            waiting=int(reply[1]),
            admitted=int(reply[2]),
            admitted_last_minute=int(reply[3]),
            oldest_wait_ms=oldest if oldest >= 0 else None,
            measured_rate=_rate(reply[5]),
            now_ms=int(reply[6]),
            order_cursor=_optional_int(reply[8]),
            order_hold_since_ms=_optional_int(reply[9]),
        )

    async def ping(self) -> None:
        await self.redis.ping()
