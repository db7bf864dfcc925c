"""Pure parts of the limiter: window maths, decisions, headers, routing, settings, breaker,
deny cache and the in-process fallback, all without Redis or sleeping."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError

from urr_gateway.ratelimit.breaker import BreakerState, CircuitBreaker
from urr_gateway.ratelimit.config import CategoryLimits, RateLimitSettings, RouteRule, WindowLimit
from urr_gateway.ratelimit.deny_cache import DenyCache
from urr_gateway.ratelimit.headers import rate_limit_headers, retry_after_seconds
from urr_gateway.ratelimit.keys import hash_tag, revoked_jti_key, window_key
from urr_gateway.ratelimit.limiter import _decision_of_reply, window_specs
from urr_gateway.ratelimit.local import LocalSlidingLog
from urr_gateway.ratelimit.metrics import DECISION_BUCKETS_S, LatencyFold
from urr_gateway.ratelimit.routing import CategoryRouter, category_for
from urr_gateway.ratelimit.store import parse_reply
from urr_gateway.ratelimit.window import (
    Decision,
    WindowOutcome,
    WindowSpec,
    WindowState,
    decide,
    decide_many,
    evaluate_window,
    ms_to_s_up,
    one_window_decision,
    policy_names,
    slot_setting_init,
    unlimited_decision,
    us_to_ms_up,
)

S = 1_000_000
AUTH = (WindowSpec("auth", 20, 60),)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- window arithmetic -------------------------------------------------------------------------


def test_rounding_is_always_up() -> None:
    assert us_to_ms_up(0) == 0
    assert us_to_ms_up(1) == 1
    assert us_to_ms_up(1000) == 1
    assert us_to_ms_up(1001) == 2
    assert us_to_ms_up(-5) == 0
    assert ms_to_s_up(1) == 1
    assert ms_to_s_up(1000) == 1
    assert ms_to_s_up(1001) == 2
    assert ms_to_s_up(59_999) == 60


def test_empty_window_fits_and_has_no_reset() -> None:
    assert evaluate_window([], 5 * S, 20, 60 * S, 1) == WindowOutcome(0, 0, 0)


def test_window_with_room_reports_reset_from_oldest() -> None:
    outcome = evaluate_window([1 * S, 2 * S], 10 * S, 20, 60 * S, 1)
    assert outcome == WindowOutcome(2, 51 * S, 0)


def test_full_window_waits_for_the_oldest_entry() -> None:
    scores = [i * S for i in range(20)]  # 20 entries at t=0..19 s
    outcome = evaluate_window(scores, 30 * S, 20, 60 * S, 1)
    assert outcome.count == 20
    assert outcome.retry_us == 30 * S  # the t=0 entry leaves at t=60
    assert outcome.reset_us == 30 * S


def test_cost_waits_for_enough_entries() -> None:
    scores = [0, 1 * S, 2 * S, 3 * S]
    # limit 5, 4 used, cost 3: two entries must leave; the second one (t=1 s) leaves at 11 s.
    outcome = evaluate_window(scores, 5 * S, 5, 10 * S, 3)
    assert outcome.retry_us == 6 * S


def test_cost_above_limit_never_fits() -> None:
    assert evaluate_window([], 0, 5, 10 * S, 6).retry_us == 10 * S


def test_slot_setting_init_builds_what_the_dataclass_builds_and_stays_frozen() -> None:
    state = WindowState("auth", 20, 60, 3, 1500)
    assert (state.policy, state.limit, state.window_s, state.remaining) == ("auth", 20, 60, 3)
    assert (state.reset_ms, state.retry_ms) == (1500, 0)  # the default
    by_name = Decision(
        allowed=True,
        category="auth",
        limit=20,
        remaining=3,
        reset_ms=1500,
        retry_after_ms=0,
        policy="auth",
        degraded=False,
        source="redis",
        windows=(state,),
    )
    by_place = Decision(True, "auth", 20, 3, 1500, 0, "auth", False, "redis", (state,))
    assert by_name == by_place
    assert hash(by_name) == hash(by_place)
    assert by_name.revoked is None
    assert repr(by_place).startswith("Decision(allowed=True, category='auth'")
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_name.allowed = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.remaining = 0  # type: ignore[misc]
    replaced = dataclasses.replace(by_name, allowed=False, revoked=True)
    assert (replaced.allowed, replaced.revoked, replaced.limit) == (False, True, 20)
    with pytest.raises(TypeError):
        WindowState("auth", 20, 60, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        WindowState("auth", 20, 60, 3, 1500, wrong=1)  # type: ignore[call-arg]

    # What it cannot reproduce it refuses: a default factory, a field outside ``__init__``.
    with pytest.raises(TypeError, match="plain defaults"):

        @slot_setting_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Listed:
            values: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="plain defaults"):

        @slot_setting_init
        @dataclasses.dataclass(frozen=True, slots=True)
        class Hidden:
            shown: int
            hidden: int = dataclasses.field(default=0, init=False)


def test_one_window_decision_is_what_the_constructors_build() -> None:
    built = one_window_decision(
        False, "auth", "auth-60s", 20, 60, 0, 1500, 900, True, "redis", True
    )
    state = WindowState("auth-60s", 20, 60, 0, 1500, 900)
    expected = Decision(False, "auth", 20, 0, 1500, 900, "auth-60s", True, "redis", (state,), True)
    assert built == expected
    assert hash(built) == hash(expected)
    assert repr(built) == repr(expected)
    assert type(built) is Decision
    assert type(built.windows[0]) is WindowState
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.allowed = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.windows[0].remaining = 3  # type: ignore[misc]
    assert dataclasses.replace(built, allowed=True).windows == (state,)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 50),
    window_s=st.integers(1, 3600),
    count=st.integers(0, 60),
    reset_us=st.integers(0, 3_600_000_000),
    retry_us=st.one_of(st.just(0), st.integers(1, 3_600_000_000)),
    cost=st.integers(1, 50),
    revoked=st.sampled_from([None, 0, 1]),
)
def test_decision_of_reply_is_parse_reply_then_decide(
    limit: int,
    window_s: int,
    count: int,
    reset_us: int,
    retry_us: int,
    cost: int,
    revoked: int | None,
) -> None:
    """The limiter's single-window reply step (inlined arithmetic, one builder call) answers
    what parsing the reply and ``decide`` answer, field for field."""
    specs = (WindowSpec("booking", limit, window_s),)
    reply = [1 if retry_us == 0 else 0, revoked or 0, count, reset_us, retry_us]
    revoked_key = None if revoked is None else "revoked:{u:1}:jti"
    parsed = parse_reply(reply, 1, revoked_key is not None)
    expected = decide(
        "booking", specs, parsed.outcomes, cost, source="redis", revoked=parsed.revoked
    )
    assert _decision_of_reply("booking", specs, cost, revoked_key, reply) == expected


def test_decide_allowed_counts_the_request() -> None:
    decision = decide("auth", AUTH, [WindowOutcome(0, 0, 0)], 1, source="redis")
    assert decision.allowed
    assert (decision.limit, decision.remaining, decision.retry_after_ms) == (20, 19, 0)
    # The request itself is now the oldest entry: quota returns one window from now.
    assert decision.reset_ms == 60_000
    assert decision.policy == "auth"
    assert not decision.degraded


def test_decide_refused_counts_nothing_and_reports_exact_wait() -> None:
    decision = decide("auth", AUTH, [WindowOutcome(20, 16_500_001, 16_500_001)], 1, source="redis")
    assert not decision.allowed
    assert decision.remaining == 0
    assert decision.retry_after_ms == 16_501  # rounded up to the next millisecond
    assert retry_after_seconds(decision) == 17


def test_decide_binds_to_the_tightest_window() -> None:
    specs = (WindowSpec("auth-60s", 20, 60), WindowSpec("auth-1s", 5, 1))
    allowed = decide(
        "auth", specs, [WindowOutcome(3, 1, 0), WindowOutcome(3, 1, 0)], 1, source="redis"
    )
    assert allowed.allowed
    assert (allowed.policy, allowed.remaining) == ("auth-1s", 1)
    refused = decide(
        "auth",
        specs,
        [WindowOutcome(20, 9 * S, 9 * S), WindowOutcome(5, S // 2, S // 2)],
        1,
        source="redis",
    )
    assert not refused.allowed
    assert (refused.policy, refused.retry_after_ms) == ("auth-60s", 9000)
    # Each window says when it would admit: t is the retry for full windows.
    assert [w.seconds_until_quota for w in refused.windows] == [9, 1]


@given(
    count=st.integers(min_value=0, max_value=30),
    # Below 0 too: both paths clamp a negative time (a clock step) to 0 ms.
    reset_us=st.integers(min_value=-S, max_value=120 * S),
    retry_us=st.integers(min_value=-S, max_value=120 * S),
    cost=st.integers(min_value=1, max_value=5),
)
def test_single_window_fast_path_matches_the_general_one(
    count: int, reset_us: int, retry_us: int, cost: int
) -> None:
    outcome = WindowOutcome(count, reset_us, retry_us)
    fast = decide("auth", AUTH, [outcome], cost, source="redis")
    general = decide_many("auth", AUTH, [outcome], cost, "redis")
    assert fast == general


def test_policy_names() -> None:
    assert policy_names("auth", [60], [None]) == ["auth"]
    assert policy_names("auth", [60], ["login"]) == ["login"]
    assert policy_names("auth", [60, 1], [None, "burst"]) == ["auth-60s", "burst"]


# -- headers -----------------------------------------------------------------------------------


def test_headers_of_a_refusal_match_the_draft_form() -> None:
    decision = decide("auth", AUTH, [WindowOutcome(20, 16_200_000, 16_200_000)], 1, source="redis")
    assert rate_limit_headers(decision) == {
        "RateLimit-Policy": '"auth";q=20;w=60',
        "RateLimit": '"auth";r=0;t=17',
        "Retry-After": "17",
    }


def test_headers_of_an_allowed_answer() -> None:
    decision = decide(
        "queue", (WindowSpec("queue", 60, 60),), [WindowOutcome(9, 1500, 0)], 1, source="redis"
    )
    assert rate_limit_headers(decision) == {
        "RateLimit-Policy": '"queue";q=60;w=60',
        "RateLimit": '"queue";r=50;t=1',
    }


def test_fail_open_shows_the_policy_but_no_invented_count() -> None:
    decision = unlimited_decision("general", (WindowSpec("general", 100, 60),), "open")
    assert decision.allowed
    assert decision.degraded
    assert rate_limit_headers(decision) == {"RateLimit-Policy": '"general";q=100;w=60'}


def test_several_windows_are_listed() -> None:
    specs = (WindowSpec("auth-60s", 20, 60), WindowSpec("auth-1s", 5, 1))
    decision = decide(
        "auth", specs, [WindowOutcome(0, 0, 0), WindowOutcome(0, 0, 0)], 1, source="redis"
    )
    headers = rate_limit_headers(decision)
    assert headers["RateLimit-Policy"] == '"auth-60s";q=20;w=60,"auth-1s";q=5;w=1'
    assert headers["RateLimit"] == '"auth-60s";r=19;t=60,"auth-1s";r=4;t=1'


@given(st.integers(min_value=1, max_value=10**9))
def test_retry_after_is_never_earlier_than_the_exact_wait(retry_us: int) -> None:
    decision = decide("auth", AUTH, [WindowOutcome(20, retry_us, retry_us)], 1, source="redis")
    assert decision.retry_after_ms * 1000 >= retry_us
    assert retry_after_seconds(decision) * S >= retry_us
    assert retry_after_seconds(decision) >= decision.windows[0].seconds_until_quota


# -- keys --------------------------------------------------------------------------------------


def test_keys_share_the_subjects_hash_tag() -> None:
    assert window_key("u:123", "auth", 60) == "{u:123}:rl:auth:60"
    assert revoked_jti_key("123", "j-1") == "{u:123}:revoked:j-1"
    assert hash_tag(window_key("ip:::1", "auth", 60)) == "ip:::1"
    assert hash_tag(revoked_jti_key("123", "x")) == "u:123"
    assert hash_tag("no-tag") is None
    assert hash_tag("{}empty") is None


# -- routing -----------------------------------------------------------------------------------


def test_default_routing_table_matches_the_design() -> None:
    router = CategoryRouter.from_settings(RateLimitSettings())
    assert router.category_for("/api/v1/auth/login") == "auth"
    assert router.category_for("/api/v1/auth") == "auth"
    assert router.category_for("/api/v1/queue/e1/enter") == "queue"
    assert router.category_for("/api/v1/reservations/e1/r2") == "booking"
    assert router.category_for("/api/v1/seats/e1") == "booking"
    assert router.category_for("/api/v1/events/e1") == "general"
    assert router.category_for("/api/v1/admin/queue/e1") == "general"
    assert router.category_for("/") == "general"
    assert router.category_for("/health/live") is None
    assert router.category_for("/health/ready") is None
    assert router.category_for("/metrics") is None


def test_prefixes_match_whole_segments_only() -> None:
    router = CategoryRouter.from_settings(RateLimitSettings())
    assert router.category_for("/api/v1/authx") == "general"
    assert router.category_for("/api/v1/seatsx/1") == "general"
    assert router.category_for("/healthz") == "general"
    assert router.category_for("/metrics2") == "general"


def test_longest_prefix_wins_whatever_the_order() -> None:
    rules = (("/api", "general"), ("/api/v1/auth/admin", "queue"), ("/api/v1/auth/*", "auth"))
    router = CategoryRouter.build(rules, "general")
    assert router.category_for("/api/v1/auth/admin/x") == "queue"
    assert router.category_for("/api/v1/auth/login") == "auth"
    assert router.category_for("/api/other") == "general"
    assert category_for("/x", router.rules, "fallback") == "fallback"


@given(st.text(alphabet="/abcdefghijklmnopqrstuvwxyz0-.%", max_size=60))
def test_routing_is_total(path: str) -> None:
    router = CategoryRouter.from_settings(RateLimitSettings())
    assert router.category_for(path) in {None, "auth", "queue", "booking", "general"}


# -- settings ----------------------------------------------------------------------------------


def test_default_settings_match_the_design() -> None:
    settings = RateLimitSettings()
    specs = window_specs(settings)
    assert specs["auth"] == (WindowSpec("auth", 20, 60),)
    assert specs["queue"] == (WindowSpec("queue", 60, 60),)
    assert specs["booking"] == (WindowSpec("booking", 10, 60),)
    assert specs["general"] == (WindowSpec("general", 100, 60),)
    policies = {name: c.failure_policy for name, c in settings.categories.items()}
    assert policies == {"auth": "local", "queue": "open", "booking": "open", "general": "open"}
    assert settings.budget_ms == 10.0


def test_settings_reject_inconsistent_tables() -> None:
    with pytest.raises(ValidationError, match="unknown category"):
        RateLimitSettings(routes=(RouteRule(prefix="/x", category="nope"),))
    with pytest.raises(ValidationError, match="default_category"):
        RateLimitSettings(default_category="nope")
    with pytest.raises(ValidationError, match="differ in length"):
        CategoryLimits(windows=(WindowLimit(limit=1, window_s=1), WindowLimit(limit=2, window_s=1)))
    with pytest.raises(ValidationError):
        RateLimitSettings(
            categories={"Bad Name": CategoryLimits(windows=(WindowLimit(limit=1, window_s=1),))}
        )
    with pytest.raises(ValidationError):
        RouteRule(prefix="no-slash", category="auth")


def test_settings_parse_from_json_like_the_environment() -> None:
    settings = RateLimitSettings.model_validate(
        {
            "categories": {
                "auth": {
                    "windows": [{"limit": 20, "window_s": 60}, {"limit": 5, "window_s": 1}],
                    "failure_policy": "local",
                },
                "general": {"windows": [{"limit": 100, "window_s": 60}]},
            },
            "routes": [{"prefix": "/api/v1/auth/*", "category": "auth"}],
        }
    )
    assert settings.routes[0].prefix == "/api/v1/auth"
    assert [s.policy for s in window_specs(settings)["auth"]] == ["auth-60s", "auth-1s"]


# -- circuit breaker ---------------------------------------------------------------------------


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read through a call, so mypy does not narrow the attribute across method calls."""
    return breaker.state


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    breaker = CircuitBreaker(failure_threshold=3, open_s=1.0)
    for _ in range(2):
        breaker.record_failure(0.0)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow(0.0)
    breaker.record_failure(0.0)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow(0.5)
    assert breaker.allow(1.0)  # the probe
    assert state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow(1.1)  # only one probe at a time
    breaker.record_failure(1.2)  # the probe failed: open again for a full interval
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow(2.1)
    assert breaker.allow(2.2)
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.failures == 0


def test_breaker_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, open_s=1.0)
    breaker.record_failure(0.0)
    breaker.record_success()
    breaker.record_failure(0.0)
    assert state(breaker) is BreakerState.CLOSED


def test_a_silent_probe_is_replaced() -> None:
    breaker = CircuitBreaker(failure_threshold=1, open_s=1.0)
    breaker.record_failure(0.0)
    assert breaker.allow(1.0)
    assert not breaker.allow(1.5)
    assert breaker.allow(2.0)  # the first probe never reported back


# -- deny cache --------------------------------------------------------------------------------


def _refusal(retry_us: int = 5 * S, category: str = "auth") -> Decision:
    return decide(category, AUTH, [WindowOutcome(20, retry_us, retry_us)], 1, source="redis")


def test_deny_cache_refuses_until_the_retry_time() -> None:
    cache = DenyCache(10)
    cache.remember("u:1", 1, _refusal(), now=100.0)
    hit = cache.lookup("u:1", "auth", 1, now=102.0)
    assert hit is not None
    assert not hit.allowed
    assert hit.source == "deny_cache"
    assert hit.retry_after_ms == 3000
    assert hit.windows[0].retry_ms == 3000
    assert cache.lookup("u:2", "auth", 1, now=102.0) is None
    assert cache.lookup("u:1", "queue", 1, now=102.0) is None
    assert cache.lookup("u:1", "auth", 1, now=105.0) is None
    assert len(cache) == 0  # expired entries are dropped


def test_deny_cache_lookup_is_replace_of_the_refusal() -> None:
    """The cached refusal brought up to ``now`` field by field, windows included: the same
    decision ``dataclasses.replace`` makes (the lookup builds it positionally), for a refusal
    of several windows, one of them without a wait of its own."""
    specs = (WindowSpec("s", 5, 1), WindowSpec("m", 100, 60))
    refused = decide(
        "two",
        specs,
        [WindowOutcome(5, 800_000, 800_000), WindowOutcome(40, 30 * S, 0)],
        1,
        source="redis",
        revoked=True,
    )
    cache = DenyCache(10)
    cache.remember("u:two", 1, refused, now=10.0)
    hit = cache.lookup("u:two", "two", 1, now=10.3)
    elapsed = 300
    expected = dataclasses.replace(
        refused,
        reset_ms=max(refused.reset_ms - elapsed, 0),
        retry_after_ms=max(refused.retry_after_ms - elapsed, 1),
        source="deny_cache",
        windows=tuple(
            dataclasses.replace(
                w,
                reset_ms=max(w.reset_ms - elapsed, 0),
                retry_ms=max(w.retry_ms - elapsed, 1) if w.retry_ms else 0,
            )
            for w in refused.windows
        ),
        revoked=None,
    )
    assert hit == expected
    assert [w.retry_ms for w in hit.windows] == [500, 0]


def test_deny_cache_lets_cheaper_requests_ask_redis() -> None:
    cache = DenyCache(10)
    cache.remember("k:a", 3, _refusal(), now=0.0)
    assert cache.lookup("k:a", "auth", 1, now=0.1) is None
    assert cache.lookup("k:a", "auth", 3, now=0.1) is not None


def test_deny_cache_is_bounded_and_ignores_allowed_answers() -> None:
    cache = DenyCache(2)
    for subject in ("a", "b", "c"):
        cache.remember(subject, 1, _refusal(), now=0.0)
    assert len(cache) == 2
    assert cache.lookup("a", "auth", 1, now=0.0) is None
    allowed = decide("auth", AUTH, [WindowOutcome(0, 0, 0)], 1, source="redis")
    cache.remember("d", 1, allowed, now=0.0)
    assert cache.lookup("d", "auth", 1, now=0.0) is None
    disabled = DenyCache(0)
    disabled.remember("a", 1, _refusal(), now=0.0)
    assert len(disabled) == 0


# -- in-process fallback -----------------------------------------------------------------------


def test_local_log_is_an_exact_sliding_window() -> None:
    clock = FakeClock(0.0)
    local = LocalSlidingLog(max_subjects=10, clock=clock)
    specs = (WindowSpec("auth", 3, 10),)
    assert [local.check("u:1", "auth", specs, 1).allowed for _ in range(3)] == [True] * 3
    refused = local.check("u:1", "auth", specs, 1)
    assert not refused.allowed
    assert refused.retry_after_ms == 10_000
    assert refused.degraded
    clock.now = 9.999
    assert not local.check("u:1", "auth", specs, 1).allowed
    clock.now = 10.0  # the first three are exactly one window old: gone
    assert local.check("u:1", "auth", specs, 1).allowed
    assert local.check("u:2", "auth", specs, 1).allowed  # subjects are separate


def test_local_log_forgets_least_recent_subjects() -> None:
    local = LocalSlidingLog(max_subjects=2, clock=FakeClock(0.0))
    specs = (WindowSpec("auth", 1, 10),)
    for subject in ("a", "b", "c"):
        local.check(subject, "auth", specs, 1)
    assert len(local) == 2


@settings(max_examples=80, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    steps=st.lists(
        st.tuples(st.integers(min_value=0, max_value=400), st.integers(min_value=1, max_value=3)),
        max_size=60,
    ),
)
def test_local_log_matches_a_brute_force_oracle(limit: int, steps: list[tuple[int, int]]) -> None:
    """Whatever the arrival pattern (1 s window, gaps in ms): a request is admitted iff the
    units admitted in the trailing window plus its cost stay within the limit; refused ones
    count nothing; the wait reported is exact (rounded up to the millisecond)."""
    clock = FakeClock(0.0)
    local = LocalSlidingLog(max_subjects=10, clock=clock)
    specs = (WindowSpec("x", limit, 1),)
    admitted: list[int] = []
    now_us = 0
    for gap_ms, cost in steps:
        now_us += gap_ms * 1000
        clock.now = now_us / S
        live = sorted(t for t in admitted if t > now_us - S)
        expected = len(live) + cost <= limit
        decision = local.check("s", "x", specs, cost)
        assert decision.allowed == expected
        if expected:
            admitted.extend([now_us] * cost)
            assert decision.remaining == limit - len(live) - cost
        elif cost <= limit:
            blocking = live[len(live) + cost - limit - 1]
            assert decision.retry_after_ms == -(-(blocking + S - now_us) // 1000)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(0, 0.2, allow_nan=False), max_size=700),
    fold_at=st.integers(1, 300),
)
def test_a_latency_fold_exports_what_observing_each_value_exports(
    values: list[float], fold_at: int
) -> None:
    """The same text exposition, byte for byte, as observing each value (counter, buckets,
    count and the sum added in the same order), read mid-way and at the end."""
    observed, folded = CollectorRegistry(), CollectorRegistry()

    def metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
        counter = Counter("urr_test_decisions", "d", ["source"], registry=registry)
        histogram = Histogram(
            "urr_test_seconds", "s", ["source"], buckets=DECISION_BUCKETS_S, registry=registry
        )
        return counter, histogram

    counter, histogram = metrics(observed)
    counter.labels("redis"), histogram.labels("redis")  # the series exist from the start, too
    lazy_counter, lazy_histogram = metrics(folded)
    fold = LatencyFold(fold_at)
    fold.watch(lazy_counter, lazy_histogram)
    pending = fold.series(lazy_histogram.labels("redis"), lazy_counter.labels("redis"))

    def exposition(registry: CollectorRegistry) -> list[bytes]:
        return [
            line
            for line in generate_latest(registry).splitlines()
            if b"_created" not in line  # creation times differ by construction
        ]

    for index, value in enumerate(values):
        counter.labels("redis").inc()
        histogram.labels("redis").observe(value)
        pending.append(value)
        if len(pending) >= fold.fold_at:
            fold.fold()
        if index == len(values) // 2:
            assert exposition(folded) == exposition(observed)
    assert exposition(folded) == exposition(observed)
    assert not pending
