"""The admission loop every replica runs.

Each pass reads the configured events from a Redis set (never a key scan) and runs one
atomic tick per event. Replicas need no coordination: the tick script enforces capacity and
the shared rate bucket, and ZPOPMIN hands each waiter to exactly one tick.
"""

from __future__ import annotations

import asyncio
import time

from redis.exceptions import RedisError

from urr_common.fairness import order_key
from urr_common.logs import get_logger
from urr_common.tasks import raise_if_cancelled
from urr_queue.events import EventType, QueueEventPublisher, event_record, waiver_record
from urr_queue.metrics import QueueMetrics
from urr_queue.settings import AdmissionSettings
from urr_queue.store import QueueStore, TickResult

_LOG = get_logger(__name__)


#: Waived numbers per ``waived`` record (about 80 KB of JSON at most).
WAIVERS_PER_RECORD = 10_000


class AdmissionLoop:
    def __init__(
        self,
        store: QueueStore,
        publisher: QueueEventPublisher,
        metrics: QueueMetrics,
        settings: AdmissionSettings,
        *,
        outbox_cap: int = 0,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.settings = settings
        #: > 0: the tick writes its ``admitted`` and ``waived`` records into the event's
        #: outbox (``outbox.py`` relays them), else they go to the best-effort publisher.
        self.outbox_cap = outbox_cap
        self._limit = asyncio.Semaphore(settings.concurrency)

    async def run_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.tick_all()
            except RedisError as exc:
                self.metrics.tick_errors.inc()
                _LOG.warning("admission_pass_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                # A bug must not stop admissions for good: log it loudly and tick again.
                self.metrics.tick_errors.inc()
                _LOG.exception("admission_pass_crashed")
            elapsed = time.monotonic() - started
            # A cancel lost below (turned into an error, or absorbed in the ticks' gather)
            # stops the loop all the same: whoever cancelled it waits for it to end.
            raise_if_cancelled()
            await asyncio.sleep(max(0.0, self.settings.tick_interval_s - elapsed))

    async def tick_all(self) -> list[TickResult]:
        event_ids = await self.store.event_ids()
        results = await asyncio.gather(*(self._guarded_tick(e) for e in event_ids))
        return [result for result in results if result is not None]

    async def _guarded_tick(self, event_id: str) -> TickResult | None:
        async with self._limit:
            try:
                return await self.tick(event_id)
            except RedisError as exc:
                self.metrics.tick_errors.inc()
                _LOG.warning("admission_tick_failed", event_id=event_id, error=str(exc))
                return None
            except Exception:
                self.metrics.tick_errors.inc()
                _LOG.exception("admission_tick_crashed", event_id=event_id)
                return None

    async def tick(self, event_id: str) -> TickResult | None:
        started = time.perf_counter()
        result = await self.store.tick(
            event_id,
            max_admit=self.settings.max_admit_per_tick,
            max_scan=self.settings.max_scan_per_tick,
            max_expire=self.settings.max_expire_per_tick,
            order_grace_ms=round(self.settings.tier1_order_grace_s * 1000),
            outbox_cap=self.outbox_cap,
        )
        self.metrics.tick_seconds.observe(time.perf_counter() - started)
        if result is None:
            # The configuration is gone: stop ticking an event nobody can use.
            await self.store.forget_event(event_id)
            return None
        # A line ordered by key: each admission's record carries its key (urr_queue.order_seed);
        # with an outbox the tick script writes it (the popped score is the key).
        seed = None
        if result.admitted and not self.outbox_cap:
            seed = await self.store.random_order_seed(event_id)
        self._report(result, seed)
        return result

    def _report(self, result: TickResult, seed: bytes | None = None) -> None:
        event_id, now = result.event_id, result.now_ms
        if result.outbox_full:
            # Loud on purpose: the event admits nobody until the relay drains the outbox.
            self.metrics.outbox_full_ticks.inc()
            _LOG.warning("admission_outbox_full", event_id=event_id, cap=self.outbox_cap)
        if not self.outbox_cap:
            self._publish_admissions(result, seed)
        for user_id in result.expired:
            self.publisher.publish(
                event_record(EventType.EXPIRED, event_id, user_id, at_ms=now, reason="session")
            )
        for user_id, number in result.dropped:
            self.publisher.publish(
                event_record(
                    EventType.EXPIRED,
                    event_id,
                    user_id,
                    at_ms=now,
                    reason="idle",
                    queueNumber=number,
                )
            )
        self.metrics.admitted.labels("tick").inc(len(result.admitted))
        self.metrics.expired.inc(len(result.expired))
        self.metrics.dropped_idle.inc(len(result.dropped))
        if result.order_held:
            self.metrics.order_held_ticks.inc()
        self.metrics.order_waived.inc(result.order_waived)

    def _publish_admissions(self, result: TickResult, seed: bytes | None) -> None:
        """Without an outbox: the tick's waivers and admissions on the best-effort buffer."""
        event_id, now = result.event_id, result.now_ms
        # Before this tick's admissions: the log must show a waiver before the late number is
        # admitted behind higher ones. Chunked, so no record nears Kafka's message size limit.
        waived = result.waived_numbers
        for start in range(0, len(waived), WAIVERS_PER_RECORD):
            chunk = waived[start : start + WAIVERS_PER_RECORD]
            self.publisher.publish(waiver_record(event_id, chunk, at_ms=now))
        for index, (user_id, number) in enumerate(result.admitted, start=1):
            self.publisher.publish(
                event_record(
                    EventType.ADMITTED,
                    event_id,
                    user_id,
                    at_ms=now,
                    position=index,
                    queueNumber=number,
                    **({} if seed is None else {"orderKey": order_key(seed, user_id)}),
                )
            )
