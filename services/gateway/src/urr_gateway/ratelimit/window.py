"""Sliding-log arithmetic and the decision a limiter answers with.

The Redis script (``sliding_window.lua``) and the in-process fallback (``local.py``) compute the
same thing; this module is the reference they both follow and the unit tests pin down.

A window of length W admits a request of cost c at time ``now`` when the entries of the log
younger than W (score > now - W) plus c stay within the limit. An entry exactly W old no longer
counts. Times are integer microseconds so both clocks (Redis ``TIME`` and the process's
monotonic clock) round the same way; the decision reports milliseconds rounded *up*, so a
client that waits ``retry_after_ms`` is never early.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, TypeVar

US_PER_MS = 1_000
US_PER_S = 1_000_000

#: Where a decision came from: Redis, the deny cache, the in-process fallback limiter, the
#: fail-open rule, or the fail-closed rule (a policy with ``failure: closed``).
DecisionSource = Literal["redis", "deny_cache", "local", "open", "closed"]


_Frozen = TypeVar("_Frozen", bound=type)


def slot_setting_init(cls: _Frozen) -> _Frozen:
    """Give a frozen slotted dataclass an ``__init__`` that stores each field through its
    slot's own setter (the descriptor's ``__set__``), with the generated one's parameters and
    defaults. The generated ``__init__`` of a frozen class goes through
    ``object.__setattr__`` per field, which looks the attribute up by name each time: for
    the decisions built on every request that was the larger part of their cost. The class
    stays frozen (assigning to a field still raises ``FrozenInstanceError``), and its
    equality, hash, ``repr`` and ``dataclasses.replace`` are the dataclass's own."""
    generated: Any = cls.__dict__["__init__"]
    plain = all(
        field.init and not field.kw_only and field.default_factory is MISSING
        for field in fields(cls)
    )
    if not plain or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: only positional fields with plain defaults")
    names = [field.name for field in fields(cls)]
    setters = {f"_set_{name}": getattr(cls, name).__set__ for name in names}
    source = f"def __init__(self, {', '.join(names)}):\n" + "".join(
        f"    _set_{name}(self, {name})\n" for name in names
    )
    exec(source, setters)  # noqa: S102 - fixed source built from the class's own field names
    init = setters["__init__"]
    init.__defaults__ = generated.__defaults__
    init.__kwdefaults__ = generated.__kwdefaults__
    init.__annotations__ = generated.__annotations__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = generated.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls


def ceil_div(numerator: int, denominator: int) -> int:
    """``ceil(numerator / denominator)`` for non-negative integers, without floats."""
    return -(-numerator // denominator)


def us_to_ms_up(value_us: int) -> int:
    return ceil_div(max(value_us, 0), US_PER_MS)


def ms_to_s_up(value_ms: int) -> int:
    return ceil_div(max(value_ms, 0), 1_000)


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    """One window evaluated at ``now``, before the request is (maybe) recorded.

    ``count``: entries inside the window. ``reset_us``: until the oldest of them leaves (0 for
    an empty log). ``retry_us``: until enough have left for the request to fit (0 when it fits).
    """

    count: int
    reset_us: int
    retry_us: int


def evaluate_window(
    scores_us: Sequence[int], now_us: int, limit: int, window_us: int, cost: int
) -> WindowOutcome:
    """Evaluate one sliding log; ``scores_us`` are the live entries' times, oldest first.

    The caller has already dropped entries with ``score <= now - window``.
    """
    count = len(scores_us)
    reset_us = scores_us[0] + window_us - now_us if count else 0
    if count + cost <= limit:
        return WindowOutcome(count, reset_us, 0)
    if cost > limit:
        # Can never fit; callers reject such costs up front, this only keeps the maths total.
        return WindowOutcome(count, reset_us, window_us)
    # Once the (count + cost - limit) oldest entries have left, the request fits.
    blocking = scores_us[count + cost - limit - 1]
    return WindowOutcome(count, reset_us, blocking + window_us - now_us)


@slot_setting_init
@dataclass(frozen=True, slots=True)
class WindowState:
    """A window as the client sees it after the decision (what the headers show)."""

    policy: str
    limit: int
    window_s: int
    remaining: int
    reset_ms: int
    #: Until this window alone would admit the refused request; 0 when it has room.
    retry_ms: int = 0

    @property
    def seconds_until_quota(self) -> int:
        """The ``t`` of the ``RateLimit`` header: whole seconds, rounded up."""
        return ms_to_s_up(self.retry_ms or self.reset_ms)


@slot_setting_init
@dataclass(frozen=True, slots=True)
class Decision:
    """A rate-limit answer.

    ``limit``, ``remaining``, ``reset_ms`` and ``policy`` describe the binding window: the one
    with the least room when allowed, the one that must wait longest when refused.
    ``reset_ms`` is the time until the oldest counted request leaves that window (the next
    moment quota comes back); ``retry_after_ms`` is 0 when allowed, else the exact wait until
    the same request would fit. ``degraded`` says Redis was not consulted because it is (or
    recently was) unusable. ``revoked`` answers the optional revoked-jti lookup made in the
    same round trip; ``None`` when it was not looked up (no key given, or no Redis answer).
    """

    allowed: bool
    category: str
    limit: int
    remaining: int
    reset_ms: int
    retry_after_ms: int
    policy: str
    degraded: bool
    source: DecisionSource
    windows: tuple[WindowState, ...]
    revoked: bool | None = None


def _one_window_builder() -> Any:
    """``one_window_decision``: a single-window ``Decision`` and its ``WindowState`` built in
    one call. Each object is made by ``object.__new__`` and its slots are filled through their
    own setters, as ``slot_setting_init``'s ``__init__`` fills them, without the two class
    calls (``type_call``, the ``__init__`` lookup and a frame each): the decision of every
    request is built here. Nothing else differs: the objects are the frozen dataclasses
    their constructors make (a unit test holds the two equal)."""
    state_fields = ("policy", "limit", "window_s", "remaining", "reset_ms", "retry_ms")
    decision_fields = (
        "allowed", "category", "limit", "remaining", "reset_ms", "retry_after_ms", "policy",
        "degraded", "source", "windows", "revoked",
    )  # fmt: skip
    if [f.name for f in fields(WindowState)] != list(state_fields) or [
        f.name for f in fields(Decision)
    ] != list(decision_fields):
        raise TypeError("one_window_decision no longer matches the decision's fields")
    scope: dict[str, Any] = {"_new": object.__new__, "_W": WindowState, "_D": Decision}
    for name in state_fields:
        scope[f"_w_{name}"] = getattr(WindowState, name).__set__
    for name in decision_fields:
        scope[f"_d_{name}"] = getattr(Decision, name).__set__
    values = {
        "policy": "policy", "limit": "limit", "window_s": "window_s", "remaining": "remaining",
        "reset_ms": "reset_ms", "retry_ms": "retry_ms", "allowed": "allowed",
        "category": "category", "retry_after_ms": "retry_ms", "degraded": "degraded",
        "source": "source", "windows": "(state,)", "revoked": "revoked",
    }  # fmt: skip
    source = (
        "def one_window_decision(allowed, category, policy, limit, window_s, remaining,"
        " reset_ms, retry_ms, degraded, source, revoked):\n"
        "    state = _new(_W)\n"
        + "".join(f"    _w_{name}(state, {values[name]})\n" for name in state_fields)
        + "    decision = _new(_D)\n"
        + "".join(f"    _d_{name}(decision, {values[name]})\n" for name in decision_fields)
        + "    return decision\n"
    )
    exec(source, scope)  # noqa: S102 - fixed source built from the classes' own field names
    return scope["one_window_decision"]


#: ``one_window_decision(allowed, category, policy, limit, window_s, remaining, reset_ms,
#: retry_ms, degraded, source, revoked)``: ``Decision(allowed, category, limit, remaining,
#: reset_ms, retry_ms, policy, degraded, source, (WindowState(policy, limit, window_s,
#: remaining, reset_ms, retry_ms),), revoked)``, built in one call.
one_window_decision: Callable[
    [bool, str, str, int, int, int, int, int, bool, DecisionSource, bool | None], Decision
] = _one_window_builder()


def policy_names(category: str, windows_s: Sequence[int], names: Sequence[str | None]) -> list[str]:
    """Header policy names: the category's own name, or ``<category>-<w>s`` per window."""
    if len(windows_s) == 1:
        return [names[0] or category]
    return [
        name or f"{category}-{window_s}s" for window_s, name in zip(windows_s, names, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A window as the decision code needs it: limit, length and header name."""

    policy: str
    limit: int
    window_s: int

    @property
    def window_us(self) -> int:
        return self.window_s * US_PER_S


def decide(
    category: str,
    specs: Sequence[WindowSpec],
    outcomes: Sequence[WindowOutcome],
    cost: int,
    *,
    source: DecisionSource,
    degraded: bool = False,
    revoked: bool | None = None,
) -> Decision:
    """Combine per-window outcomes: allowed only when every window has room for ``cost``.

    When allowed, the request is counted in every window (remaining drops by ``cost``, never
    below 0, which only a shadow policy's over-limit request reaches; an empty
    window's reset becomes its full length, since the request itself is now its oldest entry).
    When refused, nothing is counted.
    """
    if len(specs) == 1:
        outcome = outcomes[0]
        return decide_one(
            category,
            specs[0],
            outcome.count,
            outcome.reset_us,
            outcome.retry_us,
            cost,
            source,
            degraded,
            revoked,
        )
    return decide_many(category, specs, outcomes, cost, source, degraded, revoked)


def decide_many(
    category: str,
    specs: Sequence[WindowSpec],
    outcomes: Sequence[WindowOutcome],
    cost: int,
    source: DecisionSource,
    degraded: bool = False,
    revoked: bool | None = None,
) -> Decision:
    """:func:`decide` for any number of windows (the reference the fast path must match)."""
    allowed = all(outcome.retry_us == 0 for outcome in outcomes)
    states: list[WindowState] = []
    binding = 0
    binding_rank: tuple[int, int] | None = None
    retry_us = 0
    for index, (spec, outcome) in enumerate(zip(specs, outcomes, strict=True)):
        if allowed:
            remaining = max(spec.limit - outcome.count - cost, 0)
            reset_us = outcome.reset_us if outcome.count else spec.window_us
            rank = (-remaining, reset_us)
        else:
            remaining = max(spec.limit - outcome.count, 0)
            reset_us = outcome.reset_us
            rank = (outcome.retry_us, -remaining)
            retry_us = max(retry_us, outcome.retry_us)
        states.append(
            WindowState(
                spec.policy,
                spec.limit,
                spec.window_s,
                remaining,
                us_to_ms_up(reset_us),
                us_to_ms_up(outcome.retry_us),
            )
        )
        if binding_rank is None or rank > binding_rank:
            binding, binding_rank = index, rank
    chosen = states[binding]
    return Decision(
        allowed=allowed,
        category=category,
        limit=chosen.limit,
        remaining=chosen.remaining,
        reset_ms=chosen.reset_ms,
        retry_after_ms=us_to_ms_up(retry_us),
        policy=chosen.policy,
        degraded=degraded,
        source=source,
        windows=tuple(states),
        revoked=revoked,
    )


def decide_one(
    category: str,
    spec: WindowSpec,
    count: int,
    reset_us: int,
    retry_us: int,
    cost: int,
    source: DecisionSource,
    degraded: bool = False,
    revoked: bool | None = None,
) -> Decision:
    """:func:`decide` for the common single-window category, without the ranking loop (this
    runs on every request; the unit tests hold both paths to the same answers). Takes the
    window's outcome as its three numbers: the limiter builds it straight from the script's
    reply, without a ``WindowOutcome`` in between."""
    # ``us_to_ms_up`` inlined (``-(-us // 1000)`` of a value clamped at 0): two or three
    # calls fewer on every decision.
    allowed = retry_us == 0
    if allowed:
        remaining = max(spec.limit - count - cost, 0)
        if not count:
            reset_us = spec.window_us
        reset_ms = -(-reset_us // US_PER_MS) if reset_us > 0 else 0
        retry_ms = 0
    else:
        remaining = max(spec.limit - count, 0)
        reset_ms = -(-reset_us // US_PER_MS) if reset_us > 0 else 0
        retry_ms = -(-retry_us // US_PER_MS) if retry_us > 0 else 0
    return one_window_decision(
        allowed,
        category,
        spec.policy,
        spec.limit,
        spec.window_s,
        remaining,
        reset_ms,
        retry_ms,
        degraded,
        source,
        revoked,
    )


def unlimited_decision(
    category: str, specs: Sequence[WindowSpec], source: DecisionSource
) -> Decision:
    """Fail-open: allowed without knowing the count (headers show the policy only)."""
    states = tuple(WindowState(s.policy, s.limit, s.window_s, s.limit, 0) for s in specs)
    first = states[0]
    return Decision(
        allowed=True,
        category=category,
        limit=first.limit,
        remaining=first.limit,
        reset_ms=0,
        retry_after_ms=0,
        policy=first.policy,
        degraded=True,
        source=source,
        windows=states,
    )
