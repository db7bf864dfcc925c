"""The limiter's Prometheus metrics, registered on the registry the application hands in."""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from urr_common.metrics import MULTIPROCESS_DIR_ENV

#: Seconds; dense under a millisecond, where a healthy decision lives, up to the budget.
DECISION_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005, 0.0075, 0.01, 0.015,
    0.025, 0.05, 0.1,
)  # fmt: skip


@dataclass(frozen=True)
class RateLimitMetrics:
    decisions: Counter
    degraded: Counter
    redis_errors: Counter
    outages: Counter
    breaker_state: Gauge
    latency: Histogram
    deny_cache_entries: Gauge

    @classmethod
    def register(cls, registry: CollectorRegistry) -> RateLimitMetrics:
        return cls(
            decisions=Counter(
                "urr_ratelimit_decisions",
                "Rate-limit decisions by category, result and source "
                "(redis, deny_cache, local, open)",
                ["category", "result", "source"],
                registry=registry,
            ),
            degraded=Counter(
                "urr_ratelimit_degraded_decisions",
                "Decisions made without Redis, by category and failure policy",
                ["category", "policy"],
                registry=registry,
            ),
            redis_errors=Counter(
                "urr_ratelimit_redis_errors",
                "Redis calls of the limiter that failed, by kind (timeout, connection, other)",
                ["kind"],
                registry=registry,
            ),
            outages=Counter(
                "urr_ratelimit_redis_outages",
                "Times Redis became unusable for the limiter (one per outage)",
                registry=registry,
            ),
            breaker_state=Gauge(
                "urr_ratelimit_breaker_state",
                "Circuit breaker in front of Redis: 0 closed, 1 half-open, 2 open",
                registry=registry,
            ),
            latency=Histogram(
                "urr_ratelimit_decision_seconds",
                "Time to decide, by source",
                ["source"],
                buckets=DECISION_BUCKETS_S,
                registry=registry,
            ),
            deny_cache_entries=Gauge(
                "urr_ratelimit_deny_cache_entries",
                "Subjects refused from memory right now (upper bound: expired ones linger)",
                registry=registry,
            ),
        )


#: Latencies one series keeps before they are folded without a scrape (bounds the memory of a
#: process nobody scrapes; 256 floats).
FOLD_AT = 256


class LatencyFold:
    """Latency histograms (and optionally a counter of the same events) observed by appending
    the latency to a list, folded into the Prometheus values whenever one of the watched
    metrics is collected (a scrape, ``get_sample_value``) and whenever a list holds
    ``fold_at`` values: the same series, buckets, counts and sums as observing each value
    (the sum added value by value, in order: the same float), one ``list.append`` per decision
    on the hot path instead of a counter increment and a histogram observation (two Python
    calls). Event loop only, as ``loop_observer``.

    With multiprocess values (``PROMETHEUS_MULTIPROC_DIR``) a scrape reads the other
    workers' files without asking this process, so every value is folded at once
    (``fold_at`` 1): exact, as before, without the saving."""

    def __init__(self, fold_at: int = FOLD_AT) -> None:
        self.fold_at = 1 if os.environ.get(MULTIPROCESS_DIR_ENV) else fold_at
        self._series: list[tuple[list[float], Any, Any]] = []

    def series(self, histogram: Histogram, counter: Counter | None = None) -> list[float]:
        """The list one labelled ``histogram`` child's values are appended to (``counter``: a
        child counting the same events, increased by how many were folded)."""
        values: list[float] = []
        self._series.append((values, histogram, counter))
        return values

    def watch(self, *parents: Counter | Histogram) -> None:
        """Fold before any of ``parents`` is read (the registry reads a metric through its
        ``_samples``)."""
        for parent in parents:
            read: Any = parent._samples

            def folded_then_read(read: Any = read) -> Iterable[Any]:
                self.fold()
                return read()  # type: ignore[no-any-return]

            parent._samples = folded_then_read  # type: ignore[method-assign]

    def fold(self) -> None:
        """Add every pending value to its histogram (and counter), then forget them."""
        for values, histogram, counter in self._series:
            if values:
                bounds = histogram._upper_bounds
                buckets = histogram._buckets
                counts = [0] * len(bounds)
                total = histogram._sum.get()
                bucket_of = bisect.bisect_left
                for value in values:
                    total += value
                    # The first bucket whose upper bound is >= value (the last is +Inf).
                    counts[bucket_of(bounds, value)] += 1
                histogram._sum.set(total)
                for index, count in enumerate(counts):
                    if count:
                        buckets[index].inc(count)
                if counter is not None:
                    counter.inc(len(values))
                values.clear()
