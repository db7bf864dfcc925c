"""The Redis side of the limiter: one script evaluation per decision, nothing else.

The script evaluates every window of a category (and, optionally, a revoked-jti flag of the
same subject) atomically, with Redis's clock. :class:`RedisSlidingLog` makes one redis-py call
per decision; ``pipeline.PipelinedSlidingLog`` sends the decisions of one event-loop tick as
one pipeline (the default).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Protocol

from urr_common.ratelimit_usage import USAGE_TTL_S
from urr_gateway.ratelimit.keys import hash_tag, window_key_suffix
from urr_gateway.ratelimit.tenant import (
    CompiledPolicy,
    QuotaMonth,
    TenantScriptResult,
    parse_tenant_reply,
    tenant_subject,
)
from urr_gateway.ratelimit.window import WindowOutcome, WindowSpec

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

SCRIPT_NAME = "sliding_window.lua"
TENANT_SCRIPT_NAME = "tenant_decision.lua"


def load_script_source(name: str = SCRIPT_NAME) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def tenant_args(
    compiled: CompiledPolicy,
    tenant: str,
    cost: int,
    quota: int,
    now_us: int | None,
    month: QuotaMonth,
) -> list[bytes]:
    """ARGV of ``tenant_decision.lua`` (see the script). ``now_us`` is for the test-only
    fixed-clock adapter; every production caller passes ``None`` (Redis TIME). ``month``: the
    caller's current month (``QuotaMonth.of(time.time())``)."""
    args = [
        b"%d" % cost,
        b"%d" % len(compiled.specs),
        b"1" if compiled.enforce else b"0",
        b"%d" % quota,
        compiled.quota_counter(tenant, month),
        b"%d" % USAGE_TTL_S,
        b"" if now_us is None else b"%d" % now_us,
        b"%d" % month.start_s,
        b"%d" % month.end_s,
    ]
    for spec in compiled.specs:
        args += [b"%d" % spec.limit, b"%d" % spec.window_us]
    return args


def current_month(month: QuotaMonth | None) -> QuotaMonth:
    """``month`` while the local clock is still in it, else the month it is in now."""
    now = time.time()
    if month is not None and month.holds(now):
        return month
    return QuotaMonth.of(now)


def tenant_keys(compiled: CompiledPolicy, tenant: str) -> list[bytes]:
    """The tenant's window logs of this policy (``keys.window_key`` of its subject)."""
    tag = b"{" + tenant_subject(tenant).encode() + b"}"
    return [tag + suffix for suffix in compiled.window_suffixes]


@dataclass(frozen=True, slots=True)
class ScriptResult:
    outcomes: tuple[WindowOutcome, ...]
    revoked: bool | None


@dataclass(frozen=True, slots=True)
class CategoryCall:
    """The per-category parts of a call, built once: key suffixes and window arguments."""

    suffixes: tuple[str, ...]
    window_args: tuple[int, ...]


class CategoryCalls:
    """:class:`CategoryCall` per category, built on first use."""

    def __init__(self) -> None:
        self._calls: dict[str, tuple[tuple[WindowSpec, ...], CategoryCall]] = {}

    def get(self, category: str, specs: tuple[WindowSpec, ...]) -> CategoryCall:
        entry = self._calls.get(category)
        # Identity first: the limiter passes the same tuple every time, and hashing a tuple of
        # dataclasses on every decision is measurable.
        if entry is not None and (entry[0] is specs or entry[0] == specs):
            return entry[1]
        suffixes = tuple(window_key_suffix(category, spec.window_s) for spec in specs)
        window_args: list[int] = []
        for spec in specs:
            window_args += [spec.limit, spec.window_us]
        call = CategoryCall(suffixes, tuple(window_args))
        self._calls[category] = (specs, call)
        return call


class SlidingLogStore(Protocol):
    """What the limiter needs from its Redis side (the per-call and the pipelined store)."""

    async def load(self) -> None: ...

    async def ping(self) -> None: ...

    async def evaluate(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None = None,
    ) -> ScriptResult: ...

    async def aclose(self) -> None: ...


class TenantStore(Protocol):
    """A store that also runs ``tenant_decision.lua`` (both built-in stores do)."""

    async def tenant_reply(
        self, compiled: CompiledPolicy, tenant: str, cost: int, quota: int
    ) -> Sequence[int]:
        """The script's reply as it came, on Redis's clock (``tenant.tenant_decision_of_reply``
        turns it into a decision)."""
        ...

    async def evaluate_tenant(
        self,
        compiled: CompiledPolicy,
        tenant: str,
        cost: int,
        quota: int,
        now_us: int | None = None,
    ) -> TenantScriptResult: ...


class RedisSlidingLog:
    """Runs ``sliding_window.lua`` on a Redis or Redis Cluster client, one redis-py call per
    decision (the path before pipelining; kept as ``transport = "per_call"``)."""

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self._redis = redis
        self._script = redis.register_script(load_script_source())
        self._tenant_script = redis.register_script(load_script_source(TENANT_SCRIPT_NAME))
        self._calls = CategoryCalls()
        self._month: QuotaMonth | None = None

    async def load(self) -> None:
        """``SCRIPT LOAD`` (on every primary of a cluster), which also opens a connection."""
        await self._redis.script_load(self._script.script)
        await self._redis.script_load(self._tenant_script.script)

    async def evaluate_tenant(
        self,
        compiled: CompiledPolicy,
        tenant: str,
        cost: int,
        quota: int,
        now_us: int | None = None,
    ) -> TenantScriptResult:
        """One tenant decision (windows, quota, near-limit) in one round trip."""
        self._month = current_month(self._month)
        reply = await self._tenant_script(
            keys=tenant_keys(compiled, tenant),
            args=tenant_args(compiled, tenant, cost, quota, now_us, self._month),
        )
        return parse_tenant_reply(reply, len(compiled.specs))

    async def tenant_reply(
        self, compiled: CompiledPolicy, tenant: str, cost: int, quota: int
    ) -> Sequence[int]:
        self._month = current_month(self._month)
        reply: Sequence[int] = await self._tenant_script(
            keys=tenant_keys(compiled, tenant),
            args=tenant_args(compiled, tenant, cost, quota, None, self._month),
        )
        return reply

    async def ping(self) -> None:
        """One round trip; concurrent pings warm the connection pool."""
        await self._redis.ping()

    async def aclose(self) -> None:
        """Nothing of its own to close: the connections are the client's."""

    async def evaluate(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None = None,
    ) -> ScriptResult:
        """Decide and, when every window has room, record the request; one round trip."""
        call = self._calls.get(category, specs)
        tag = "{" + subject + "}"
        keys = [tag + suffix for suffix in call.suffixes]
        if revoked_key is not None:
            if hash_tag(revoked_key) != subject:
                raise ValueError("revoked_key must carry the subject's hash tag")
            keys.append(revoked_key)
        args = (cost, len(specs), 1 if revoked_key is not None else 0, *call.window_args)
        reply = await self._script(keys=keys, args=args)
        return parse_reply(reply, len(specs), revoked_key is not None)


def parse_reply(reply: Sequence[int], windows: int, revocation_checked: bool) -> ScriptResult:
    if len(reply) != 2 + 3 * windows:
        raise ValueError(f"unexpected script reply of {len(reply)} items")
    if windows == 1:  # the common single-window category, without the generator
        return ScriptResult(
            (WindowOutcome(int(reply[2]), int(reply[3]), int(reply[4])),),
            bool(reply[1]) if revocation_checked else None,
        )
    outcomes = tuple(
        WindowOutcome(int(reply[2 + 3 * i]), int(reply[3 + 3 * i]), int(reply[4 + 3 * i]))
        for i in range(windows)
    )
    return ScriptResult(outcomes, bool(reply[1]) if revocation_checked else None)
