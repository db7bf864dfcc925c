"""The counter advancer (EventBridge, once a minute) and the advance step the admin shares.

Each invocation runs ``steps_per_invocation`` cycles ``step_interval_s`` apart (30 x 2 s by
default: the minute's admissions arrive in thirty small waves, not one or six big ones, so the
admitted waiters' checks and their arrival in Tier 2 come as a steady flow, not a burst).
In each cycle, for each active event (from the ``#active`` registry item: one GetItem, no
Scan):

1. read Tier 2's capacity feed; unreachable or nonsense means advance nothing (fail safe);
2. budget = min(the event's ``batchSize``, what Tier 2 can absorb before the next cycle);
3. walk the line by number from ``servingCounter + 1`` (line items read by key), passing
   live places until the budget is spent and skipping (and flagging) abandoned ones: a place
   whose last check is older than ``abandon_after_s``. A skipped waiter who comes back is
   told to take a new place (410), so a no-show never costs Tier-2 capacity;
4. compare-and-set ``servingCounter`` (condition: unchanged since read, same epoch, and
   ``<= nextPosition``), so two advancers or an admin at once can never double-advance.

The queueing method changes step 3: ``random`` grants the places with the smallest order keys
among those waiting (``_grant_random``) and publishes each grant and waiver to the admission
log (``grant_log``); ``passthrough`` and ``reject`` advance nothing (every check is let in,
or nobody waits).

Each run also republishes the edge document (active events and public keys).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import BotoCoreError, ClientError

from urr_common.fairness import QueueMethod
from urr_vwr_lambda.capacity import CapacityUnavailable, fetch_capacity
from urr_vwr_lambda.grant_log import (
    Draw,
    GrantLogUnavailable,
    grant_records,
    passed_records,
    waiver_records,
)
from urr_vwr_lambda.queueing import (
    CapacityFeed,
    PositionRow,
    pick_random,
    smoothed_rate,
    walk_positions,
)
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.store import EventNotFound, EventState, StaleCounter

_SAFETY_MARGIN_MS = 5000
#: Rows read beyond the cycle's budget in the first page: most cycles skip no abandoned place,
#: so a page the size of the budget usually ends the walk; skips cost a further page.
_PAGE_MARGIN = 16


@dataclass(frozen=True)
class AdvanceOutcome:
    event_id: str
    before: int
    after: int
    next_position: int
    live: int
    skipped: int
    limited_by: str
    capacity: CapacityFeed | None

    @property
    def advanced(self) -> int:
        return self.after - self.before

    def to_dict(self) -> dict[str, Any]:
        return {
            "eventId": self.event_id,
            "advanced": self.advanced,
            "admitted": self.live,
            "skippedAbandoned": self.skipped,
            "servingCounter": self.after,
            "nextPosition": self.next_position,
            "limitedBy": self.limited_by,
            "capacity": None
            if self.capacity is None
            else {
                "waiting": self.capacity.waiting,
                "admitted": self.capacity.admitted,
                "capacity": self.capacity.capacity,
                "admit_per_second": self.capacity.admit_per_second,
            },
        }


def _nothing_to_advance(state: EventState) -> str | None:
    """Why this event's line cannot move now, or None."""
    if state.queue_method in (QueueMethod.PASSTHROUGH, QueueMethod.REJECT):
        # Everyone is let in at their check, or nobody waits: nothing to advance.
        return state.queue_method.value
    if state.serving_counter >= state.next_position:
        return "queue_end"
    return None


def advance_event(
    runtime: VwrRuntime,
    event_id: str,
    *,
    requested: int | None,
    interval_s: float,
    measure_rate: bool,
) -> AdvanceOutcome:
    """Move one event's serving counter by up to ``requested`` live places (see module doc).

    ``requested=None`` means the event's own ``batchSize``, and an inactive event is left as it
    is (the advancer's case); the admin names a number and may advance an inactive room.
    """
    store = runtime.store
    state = store.get_event(event_id, consistent=True)
    if state is None:
        raise EventNotFound(event_id)

    def unchanged(reason: str, feed: CapacityFeed | None = None) -> AdvanceOutcome:
        return AdvanceOutcome(
            event_id,
            state.serving_counter,
            state.serving_counter,
            state.next_position,
            0,
            0,
            reason,
            feed,
        )

    if requested is None:
        if not state.is_active:
            return unchanged("inactive")
        requested = state.batch_size
    idle = _nothing_to_advance(state)
    if idle is not None:
        return unchanged(idle)
    settings = runtime.settings
    try:
        feed = fetch_capacity(settings.queue.url, event_id, timeout_s=settings.queue.timeout_s)
    except CapacityUnavailable as exc:
        runtime.logger.warning(
            "capacity_unavailable", extra={"event_id": event_id, "error": str(exc)}
        )
        runtime.metrics.add_metric(name="CapacityUnavailable", unit=MetricUnit.Count, value=1)
        return unchanged("capacity_unavailable")
    absorbable = feed.absorbable(interval_s)
    budget = min(requested, absorbable)
    if budget <= 0:
        return unchanged("capacity", feed)
    now_s = runtime.now_s()
    cutoff = now_s - settings.advancer.abandon_after_s
    if state.queue_method is QueueMethod.RANDOM:
        return _grant_random(runtime, state, requested, budget, cutoff, feed, interval_s)
    walk = walk_positions(
        store.places_above(
            state, upto=state.next_position, now_s=now_s, page_size=budget + _PAGE_MARGIN
        ),
        serving_counter=state.serving_counter,
        budget=budget,
        cutoff=cutoff,
        max_skips=settings.advancer.max_skips_per_step,
        mark_abandoned=lambda row: store.mark_abandoned(state, row, cutoff_s=cutoff),
    )
    if walk.serving_counter == state.serving_counter:
        return unchanged("queue_end", feed)
    rate = None
    if measure_rate and interval_s > 0:
        rate = smoothed_rate(state.admit_rate, walk.live / interval_s, interval_s)
    try:
        after = store.advance_to(
            state, serving_counter=walk.serving_counter, admit_rate=rate, now_ms=runtime.now_ms()
        )
    except StaleCounter:
        runtime.metrics.add_metric(name="AdvanceRaceLost", unit=MetricUnit.Count, value=1)
        return unchanged("concurrent_update", feed)
    runtime.metrics.add_metric(name="AdvancedLive", unit=MetricUnit.Count, value=walk.live)
    runtime.metrics.add_metric(name="SkippedAbandoned", unit=MetricUnit.Count, value=walk.skipped)
    return AdvanceOutcome(
        event_id,
        state.serving_counter,
        after.serving_counter,
        after.next_position,
        walk.live,
        walk.skipped,
        _limited_by(walk.live, budget, requested),
        feed,
    )


def _limited_by(live: int, budget: int, requested: int) -> str:
    if live >= budget:
        return "requested" if budget == requested else "capacity"
    return "queue_end"


#: The random method draws among at most this many numbers above its floor per cycle: the
#: cost of a cycle stays bounded (about 2 reads per 100 numbers); later arrivals join the
#: draw as the floor moves up.
RANDOM_WINDOW = 10_000


def _grant_random(
    runtime: VwrRuntime,
    state: EventState,
    requested: int,
    budget: int,
    cutoff: int,
    feed: CapacityFeed,
    interval_s: float,
) -> AdvanceOutcome:
    """The random method's cycle: grant the ``budget`` smallest order keys among the waiting.

    The counters item is compare-and-set first (``servingCounter`` counts grants, and the
    floor moves), then the grants are written numbered from the old count: two advancers at
    once never grant the same numbers, and a lost race grants nothing.
    """
    if not seed_committed(runtime, state):
        return AdvanceOutcome(
            state.event_id,
            state.serving_counter,
            state.serving_counter,
            state.next_position,
            0,
            0,
            "seed_not_committed",
            feed,
        )
    store = runtime.store
    upto = min(state.next_position, state.line_floor + RANDOM_WINDOW)
    reading = replace(state, serving_counter=state.line_floor)
    given_up: list[PositionRow] = []

    def give_up(row: PositionRow) -> bool:
        marked = store.mark_abandoned(state, row, cutoff_s=cutoff)
        if marked:
            given_up.append(row)
        return marked

    pick = pick_random(
        store.places_above(reading, upto=upto, now_s=runtime.now_s()),
        seed=state.seed_bytes,
        line_floor=state.line_floor,
        budget=budget,
        cutoff=cutoff,
        max_skips=runtime.settings.advancer.max_skips_per_step,
        mark_abandoned=give_up,
    )
    draw = Draw(
        state.event_id,
        state.epoch,
        first_seq=state.serving_counter + 1,
        floor=state.line_floor,
        top=upto,
        cutoff_ms=cutoff * 1000,
        at_ms=runtime.now_ms(),
    )
    # The places given up are gone whether or not this cycle wins the race below.
    records = waiver_records(draw, state.seed_bytes, given_up)
    granted = len(pick.granted)
    unchanged = AdvanceOutcome(
        state.event_id,
        state.serving_counter,
        state.serving_counter,
        state.next_position,
        0,
        pick.skipped,
        "queue_end",
        feed,
    )
    if not granted and pick.line_floor == state.line_floor:
        _publish_grants(runtime, records)
        return unchanged
    rate = None
    if interval_s > 0:
        rate = smoothed_rate(state.admit_rate, granted / interval_s, interval_s)
    try:
        after = store.advance_to(
            state,
            serving_counter=state.serving_counter + granted,
            admit_rate=rate,
            now_ms=runtime.now_ms(),
            line_floor=pick.line_floor,
        )
    except StaleCounter:
        runtime.metrics.add_metric(name="AdvanceRaceLost", unit=MetricUnit.Count, value=1)
        _publish_grants(runtime, records)
        return replace(unchanged, limited_by="concurrent_update")
    now_s = runtime.now_s()
    decided = [
        (seq, row, store.grant(state, row, seq=seq, now_s=now_s))
        for seq, row in enumerate(pick.granted, start=state.serving_counter + 1)
    ]
    passed = passed_records(draw, state.seed_bytes, pick.quiet, pick.granted)
    _publish_grants(runtime, records + passed + grant_records(draw, state.seed_bytes, decided))
    runtime.metrics.add_metric(name="AdvancedLive", unit=MetricUnit.Count, value=granted)
    runtime.metrics.add_metric(name="SkippedAbandoned", unit=MetricUnit.Count, value=pick.skipped)
    limited_by = _limited_by(granted, budget, requested)
    return AdvanceOutcome(
        state.event_id,
        state.serving_counter,
        after.serving_counter,
        after.next_position,
        granted,
        pick.skipped,
        limited_by,
        feed,
    )


def seed_committed(runtime: VwrRuntime, state: EventState) -> bool:
    """Whether the event's seed commitment is public, so a draw may run (``grant_log``).

    With the grant log off there is nothing to publish to (and no draw to audit): True.
    """
    publisher = runtime.grant_log
    if publisher is None or state.order_seed is None:
        return True
    try:
        publisher.commit_seed(state.event_id, state.order_seed)
    except GrantLogUnavailable as exc:
        runtime.logger.warning(
            "seed_commitment_unpublished", extra={"event_id": state.event_id, "error": str(exc)}
        )
        runtime.metrics.add_metric(name="GrantLogUnavailable", unit=MetricUnit.Count, value=1)
        return False
    return True


def _publish_grants(runtime: VwrRuntime, records: list[dict[str, Any]]) -> None:
    """Hand a cycle's grant records to the admission log; a broker outage keeps them pending
    in the publisher (sent before the next cycle's), it never stops the line."""
    publisher = runtime.grant_log
    if publisher is None:
        return
    try:
        sent = publisher.publish(records)
    except GrantLogUnavailable as exc:
        runtime.logger.warning(
            "grant_log_unavailable", extra={"error": str(exc), "pending": len(publisher.pending)}
        )
        runtime.metrics.add_metric(name="GrantLogUnavailable", unit=MetricUnit.Count, value=1)
        return
    runtime.metrics.add_metric(name="GrantLogRecords", unit=MetricUnit.Count, value=sent)


def run_cycle(runtime: VwrRuntime, *, interval_s: float) -> list[AdvanceOutcome]:
    """One cycle over every active event; one event's failure never stops the others."""
    store = runtime.store
    active = store.active_event_ids()
    try:
        runtime.publish_edge_config(active)
    except (OSError, ValueError, ClientError, BotoCoreError) as exc:
        runtime.logger.warning("edge_config_not_published", extra={"error": str(exc)})
    outcomes = []
    for event_id in active:
        try:
            outcome = advance_event(
                runtime, event_id, requested=None, interval_s=interval_s, measure_rate=True
            )
            if outcome.limited_by != "inactive":
                outcomes.append(outcome)
                runtime.emit_event_gauges(event_id, outcome.after, outcome.next_position)
            if outcome.advanced:
                runtime.logger.info("advanced", extra=outcome.to_dict())
        except (ClientError, BotoCoreError, EventNotFound) as exc:
            runtime.logger.exception(
                "advance_failed", extra={"event_id": event_id, "error": str(exc)}
            )
            runtime.metrics.add_metric(name="AdvanceFailed", unit=MetricUnit.Count, value=1)
    return outcomes


def _bounded(value: Any, low: float, high: float, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(min(high, max(low, value)))


def run(runtime: VwrRuntime, event: Any, context: Any) -> dict[str, Any]:
    settings = runtime.settings.advancer
    payload = event if isinstance(event, dict) else {}
    steps = int(_bounded(payload.get("steps"), 1, 60, settings.steps_per_invocation))
    interval_s = _bounded(payload.get("intervalSeconds"), 0, 60, settings.step_interval_s)
    cycles: list[list[dict[str, Any]]] = []
    for step in range(steps):
        started = time.monotonic()
        try:
            cycles.append(
                [outcome.to_dict() for outcome in run_cycle(runtime, interval_s=interval_s)]
            )
        finally:
            runtime.flush_metrics()
        if step == steps - 1:
            break
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining) and remaining() < interval_s * 1000 + _SAFETY_MARGIN_MS:
            break
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))
    return {"cycles": cycles}


_RUNTIME: list[VwrRuntime] = []


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The EventBridge entry point; settings and clients are built on the first invocation."""
    if not _RUNTIME:
        _RUNTIME.append(VwrRuntime.from_environment())
    return run(_RUNTIME[0], event, context)
