"""The queue's own Prometheus metrics, registered on the application's registry.

Counters move where things happen. The per-event gauges (``EventGauges``: waiting, admitted
sessions, capacity, admission rate, oldest waiter, estimated wait at the back) are the live
figures the admin API reads, copied from Redis by ``FiguresRefresher`` every few seconds:
scrapes never touch Redis, and every replica exports the same shared figures (the dashboard
takes ``max by (event_id)``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from urr_common.logs import get_logger
from urr_queue.estimates import admission_rate, eta_seconds

if TYPE_CHECKING:
    from urr_queue.store import Figures, QueueStore

_LOG = get_logger(__name__)


@dataclass(frozen=True)
class QueueMetrics:
    entries: Counter
    tier1_tokens: Counter
    admitted: Counter
    expired: Counter
    dropped_idle: Counter
    order_held_ticks: Counter
    order_waived: Counter
    left: Counter
    tokens_issued: Counter
    tick_seconds: Histogram
    tick_errors: Counter
    events_published: Counter
    events_dropped: Counter
    reservation_records: Counter
    tier1_marks: Counter
    outbox_relayed: Counter
    outbox_relay_failures: Counter
    outbox_full_ticks: Counter
    outbox_depth: Gauge
    outbox_oldest_age: Gauge

    @classmethod
    def register(cls, registry: CollectorRegistry) -> QueueMetrics:
        return cls(
            entries=Counter(
                "urr_queue_entries",
                "Enter calls by outcome",
                ["outcome"],
                registry=registry,
            ),
            tier1_tokens=Counter(
                "urr_queue_tier1_tokens",
                "Tier-1 tokens seen on enter, by verdict and whether the event requires one",
                ["outcome", "required"],
                registry=registry,
            ),
            admitted=Counter("urr_queue_admitted", "Users admitted", ["path"], registry=registry),
            expired=Counter(
                "urr_queue_sessions_expired", "Admitted sessions that ran out", registry=registry
            ),
            dropped_idle=Counter(
                "urr_queue_idle_dropped",
                "Waiters dropped at the front because they stopped polling",
                registry=registry,
            ),
            order_held_ticks=Counter(
                "urr_queue_order_held_ticks",
                "Ticks that kept free slots for a lower Tier-1 number still on its way",
                registry=registry,
            ),
            order_waived=Counter(
                "urr_queue_order_waived",
                "Tier-1 numbers given up after the order grace (released, never arrived in time)",
                registry=registry,
            ),
            left=Counter(
                "urr_queue_left",
                "Places and sessions ended on request",
                ["reason", "was"],
                registry=registry,
            ),
            tokens_issued=Counter(
                "urr_queue_entry_tokens_issued", "Entry tokens signed", registry=registry
            ),
            tick_seconds=Histogram(
                "urr_queue_tick_seconds",
                "Duration of one admission tick of one event",
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                registry=registry,
            ),
            tick_errors=Counter(
                "urr_queue_tick_errors", "Admission ticks that failed", registry=registry
            ),
            events_published=Counter(
                "urr_queue_events_published", "queue-events records sent", registry=registry
            ),
            events_dropped=Counter(
                "urr_queue_events_dropped",
                "queue-events records dropped (buffer full or broker failure)",
                ["reason"],
                registry=registry,
            ),
            reservation_records=Counter(
                "urr_queue_reservation_records",
                "reservation-events records consumed, by outcome",
                ["outcome"],
                registry=registry,
            ),
            tier1_marks=Counter(
                "urr_queue_tier1_marks",
                "Spent Tier-1 places told to the Tier-1 table: marked, gone (no such row, or "
                "marked before) or failed (kept for the next round)",
                ["outcome"],
                registry=registry,
            ),
            outbox_relayed=Counter(
                "urr_queue_outbox_relayed",
                "Admission outbox records the broker acknowledged (then deleted from Redis)",
                registry=registry,
            ),
            outbox_relay_failures=Counter(
                "urr_queue_outbox_relay_failures",
                "Relay rounds that failed (records stay in the outbox), by where",
                ["stage"],
                registry=registry,
            ),
            outbox_full_ticks=Counter(
                "urr_queue_outbox_full_ticks",
                "Ticks that admitted nobody because the event's admission outbox was at its cap",
                registry=registry,
            ),
            outbox_depth=Gauge(
                "urr_queue_outbox_depth",
                "Records waiting in the admission outboxes of all events (last relay round; "
                "every replica sees the same figure)",
                registry=registry,
            ),
            outbox_oldest_age=Gauge(
                "urr_queue_outbox_oldest_age_seconds",
                "Age of the oldest record waiting in any admission outbox (0: all relayed)",
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class EventFigures:
    """One event's gauge values, as numbers (NaN: not known, e.g. no rate while paused)."""

    waiting: int
    active_sessions: int
    capacity: int
    admission_rate: float
    oldest_waiter_seconds: float
    eta_seconds: float

    @classmethod
    def of(cls, figures: Figures) -> EventFigures:
        config = figures.config
        rate = admission_rate(
            figures.measured_rate,
            mode=config.mode,
            capacity=config.capacity,
            admit_per_second=config.admit_per_second,
            session_seconds=config.session_seconds,
        )
        if figures.waiting == 0:
            eta: float = 0.0
        else:
            known = eta_seconds(figures.waiting, rate)
            eta = math.nan if known is None else float(known)
        oldest = figures.oldest_wait_ms
        return cls(
            waiting=figures.waiting,
            active_sessions=figures.admitted,
            capacity=config.capacity,
            admission_rate=0.0 if rate is None else rate,
            oldest_waiter_seconds=0.0 if oldest is None else oldest / 1000,
            eta_seconds=eta,
        )


class EventGauges:
    """Per-event gauges, labelled ``event_id``; an event that is gone loses its series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.waiting = Gauge(
            "urr_queue_waiting", "People waiting in line", ["event_id"], registry=registry
        )
        self.active_sessions = Gauge(
            "urr_queue_active_sessions",
            "Admitted sessions open now (not the admissions counter)",
            ["event_id"],
            registry=registry,
        )
        self.capacity = Gauge(
            "urr_queue_capacity", "Most admitted sessions at once", ["event_id"], registry=registry
        )
        self.admission_rate = Gauge(
            "urr_queue_admission_rate",
            "Admissions per second the line moves at (measured, else what the configuration "
            "allows; 0 while paused)",
            ["event_id"],
            registry=registry,
        )
        self.oldest_waiter = Gauge(
            "urr_queue_oldest_waiter_seconds",
            "How long the person at the front has been in line (0 when nobody waits)",
            ["event_id"],
            registry=registry,
        )
        self.eta = Gauge(
            "urr_queue_eta_seconds",
            "Estimated wait of the last person in line (NaN when no rate is known)",
            ["event_id"],
            registry=registry,
        )
        self._shown: set[str] = set()

    def _all(self) -> tuple[Gauge, ...]:
        return (
            self.waiting,
            self.active_sessions,
            self.capacity,
            self.admission_rate,
            self.oldest_waiter,
            self.eta,
        )

    def show(self, current: dict[str, EventFigures]) -> None:
        """Set every event of ``current``; drop the series of events no longer there."""
        for event_id, values in current.items():
            self.waiting.labels(event_id).set(values.waiting)
            self.active_sessions.labels(event_id).set(values.active_sessions)
            self.capacity.labels(event_id).set(values.capacity)
            self.admission_rate.labels(event_id).set(values.admission_rate)
            self.oldest_waiter.labels(event_id).set(values.oldest_waiter_seconds)
            self.eta.labels(event_id).set(values.eta_seconds)
        for gone in self._shown - set(current):
            for gauge in self._all():
                gauge.remove(gone)
        self._shown = set(current)


class FiguresRefresher:
    """Copies every configured event's live figures into ``EventGauges`` every interval."""

    def __init__(self, store: QueueStore, gauges: EventGauges, interval_s: float) -> None:
        self.store = store
        self.gauges = gauges
        self.interval_s = interval_s

    async def refresh(self) -> None:
        event_ids: Sequence[str] = await self.store.event_ids()
        answers = await asyncio.gather(*(self.store.figures(e) for e in event_ids))
        self.gauges.show(
            {
                event_id: EventFigures.of(figures)
                for event_id, figures in zip(event_ids, answers, strict=True)
                if figures is not None
            }
        )

    async def run_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except RedisError as exc:
                # Keep the last figures: a gap in Redis is not an empty queue.
                _LOG.warning("figures_refresh_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                # A bug must not freeze the gauges for good: log it loudly and go on.
                _LOG.exception("figures_refresh_crashed")
            await asyncio.sleep(self.interval_s)
