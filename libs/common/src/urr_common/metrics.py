"""Prometheus metrics with one registry per application, never the process-global one.

A per-app registry lets tests build many apps in one process, and lets a service register its
own metrics next to the HTTP ones without name clashes between services.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.values import MutexValue

#: Buckets in seconds, dense below 25 ms where the gateway's budgets live.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass(frozen=True)
class HttpMetrics:
    """The request metrics every HTTP service exports."""

    requests: Counter
    latency: Histogram
    in_flight: Gauge
    #: Labelled children by (method, route, status class): ``labels()`` costs more than the
    #: increment it leads to, so each combination is looked up once.
    _children: dict[tuple[str, str, int], tuple[Any, Any]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and record how long it took.

        Only from the event loop's thread (every HTTP server and middleware of this project
        observes there): the increments skip prometheus_client's lock (``loop_adder``,
        ``loop_observer``), three lock rounds fewer per request."""
        key = (method, route, status // 100)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                loop_adder(self.requests.labels(method, route, f"{status // 100}xx")),
                loop_observer(self.latency.labels(method, route)),
            )
        children[0](1)
        children[1](seconds)

    @classmethod
    def register(cls, registry: CollectorRegistry) -> HttpMetrics:
        return cls(
            requests=Counter(
                "urr_http_requests",
                "HTTP requests answered, by route and status class",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "urr_http_request_duration_seconds",
                "Time from request to response, by route",
                ["method", "route"],
                buckets=LATENCY_BUCKETS_S,
                registry=registry,
            ),
            in_flight=Gauge(
                "urr_http_requests_in_flight",
                "Requests being handled now",
                registry=registry,
            ),
        )


def adder(metric: Counter | Gauge) -> Callable[[float], None]:
    """``metric.inc`` (a negative amount: ``dec`` of a gauge) as one call on its value.

    For a metric without labels or a labelled child resolved once. prometheus_client's
    ``inc`` checks on every call what cannot change after the child exists (that it is
    observable, the amount's sign for a counter): on the gateway's path six such calls a
    request cost more than the rest of its bookkeeping. Falls back to the public method if
    the library's value holder is not where version 0.2x keeps it. A counter's amount must
    stay non-negative (the callers pass 1).
    """
    value = getattr(metric, "_value", None)
    inc = getattr(value, "inc", None)
    if callable(inc):
        return cast("Callable[[float], None]", inc)
    return metric.inc


def observer(metric: Histogram) -> Callable[[float], None]:
    """``metric.observe`` of a histogram (without labels, or a labelled child) as a bucket
    found by bisection and two increments, without the per-call checks and the linear scan
    of the buckets. Falls back to the public method as ``adder`` does."""
    bounds = getattr(metric, "_upper_bounds", None)
    buckets = getattr(metric, "_buckets", None)
    total = getattr(metric, "_sum", None)
    if not (isinstance(bounds, list) and isinstance(buckets, list) and hasattr(total, "inc")):
        return metric.observe
    bucket_adds = [bucket.inc for bucket in buckets]
    add_to_sum = total.inc  # type: ignore[union-attr]
    bucket_of = bisect.bisect_left

    def observe(amount: float) -> None:
        add_to_sum(amount)
        # The first bucket whose upper bound is >= amount (the last bound is +Inf).
        bucket_adds[bucket_of(bounds, amount)](1)

    return observe


class _LoopValue(MutexValue):
    """A ``MutexValue`` whose increments skip the lock: for a value only one thread (the
    event loop's) ever writes. A ``+=`` there is not interleaved with another writer, and a
    scrape reads a whole float either way."""

    def inc(self, amount: float) -> None:
        self._value += amount


def _unlocked(value: object) -> bool:
    """Make a single-process ``MutexValue`` lock-free on increment (``_LoopValue``: same
    layout, same state); False for any other holder (a multiprocess file-backed value)."""
    if type(value) is MutexValue:
        value.__class__ = _LoopValue
    return type(value) is _LoopValue


def loop_adder(metric: Counter | Gauge) -> Callable[[float], None]:
    """``adder`` for a metric that only the event loop's thread increments: its value's
    increment without the lock (the lock's enter and exit cost more than the addition).
    With multiprocess values (``PROMETHEUS_MULTIPROC_DIR``) it is ``adder``. Do not use it
    for a metric any other thread writes."""
    value = getattr(metric, "_value", None)
    if _unlocked(value):
        return cast("Callable[[float], None]", value.inc)  # type: ignore[union-attr]
    return adder(metric)


def loop_observer(metric: Histogram) -> Callable[[float], None]:
    """``observer`` for a histogram only the event loop's thread observes: the sum and the
    bucket added to in one call, without a lock or a call per value (as ``loop_adder``;
    ``observer`` with multiprocess values)."""
    bounds = getattr(metric, "_upper_bounds", None)
    buckets = getattr(metric, "_buckets", None)
    total = getattr(metric, "_sum", None)
    if not (
        isinstance(bounds, list)
        and isinstance(buckets, list)
        and _unlocked(total)
        and all(_unlocked(bucket) for bucket in buckets)
    ):
        return observer(metric)
    values: list[_LoopValue] = buckets
    loop_total = cast("_LoopValue", total)
    bucket_of = bisect.bisect_left

    def observe(amount: float) -> None:
        loop_total._value += amount
        # The first bucket whose upper bound is >= amount (the last bound is +Inf).
        values[bucket_of(bounds, amount)]._value += 1

    return observe


#: prometheus_client's own switch: set (by the gateway's supervisor) for worker processes that
#: share one port, each writing its samples to files in that directory.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """``GET /metrics`` in the Prometheus text format for ``registry``.

    With ``PROMETHEUS_MULTIPROC_DIR`` set, every worker answers with the sum over all
    workers (prometheus_client's multiprocess collector), so a scrape that lands on any one
    of them sees the whole pod.
    """

    def exposition() -> bytes:
        if os.environ.get(MULTIPROCESS_DIR_ENV):
            combined = CollectorRegistry()
            MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
            return generate_latest(combined)
        return generate_latest(registry)

    async def handle(_: web.Request) -> web.Response:
        response = web.Response(body=exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return handle
