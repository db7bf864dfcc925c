"""The queue's own Prometheus metrics, registered on the application's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


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
        )
