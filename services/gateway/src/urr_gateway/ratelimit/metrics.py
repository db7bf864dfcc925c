"""The limiter's Prometheus metrics, registered on the registry the application hands in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
