"""Long-running processes without an API of their own (relay, payment stand-in, consumers,
the local SQS poller): one background loop plus a small health listener.

Liveness story: ``/health/live`` answers while the event loop runs; ``/health/ready`` is 503
when the loop has not completed a round for ``stale_after_s`` (e.g. Kafka or PostgreSQL
unreachable) and says why. The loop handles its own errors and retries; should it still die,
the process exits non-zero so the process manager sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_common.logs import configure_logging, get_logger
from urr_common.service import (
    READINESS_KEY,
    create_service_app,
    run,
    serve,
    sleep_unless_stopped,
)
from urr_common.settings import KafkaSettings, PostgresSettings, ServiceSettings

if TYPE_CHECKING:
    import asyncpg
    from aiokafka import AIOKafkaProducer

_LOG = get_logger(__name__)


@dataclass
class Heartbeat:
    """Updated by a loop after every completed round; read by the readiness check."""

    stale_after_s: float = 30.0
    last_ok: float = field(default_factory=time.monotonic)
    last_error: str | None = None

    def ok(self) -> None:
        self.last_ok = time.monotonic()
        self.last_error = None

    def failed(self, error: BaseException) -> None:
        self.last_error = f"{type(error).__name__}: {error}"[:200]

    async def check(self) -> None:
        age = time.monotonic() - self.last_ok
        if age > self.stale_after_s:
            raise RuntimeError(f"no completed round for {age:.0f}s; last error: {self.last_error}")


#: A background loop: runs until ``stop`` is set, reporting progress on the heartbeat.
LoopBody = Callable[[asyncio.Event, Heartbeat], Coroutine[Any, Any, None]]

STOP_KEY = web.AppKey("urr_process_stop", asyncio.Event)
FAILED_KEY = web.AppKey("urr_process_failed", list)


def create_process_app(
    settings: ServiceSettings,
    name: str,
    body: LoopBody,
    *,
    registry: CollectorRegistry | None = None,
    stale_after_s: float = 30.0,
) -> web.Application:
    """The health app of a background process; the loop starts and stops with it."""
    app = create_service_app(settings, registry=registry)
    app[STOP_KEY] = asyncio.Event()
    app[FAILED_KEY] = []

    async def loop_ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        beat = Heartbeat(stale_after_s=stale_after_s)
        app[READINESS_KEY].add_check(name, beat.check)
        task = asyncio.create_task(body(stop, beat), name=name)

        def on_done(done: asyncio.Task[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                _LOG.error("loop_died", loop=name, error=repr(done.exception()))
                app[FAILED_KEY].append(name)
                app[STOP_KEY].set()

        task.add_done_callback(on_done)
        yield
        stop.set()
        try:
            async with asyncio.timeout(settings.http.shutdown_timeout_s):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
        except Exception:  # already logged by on_done
            _LOG.debug("loop_failed_before_shutdown", loop=name)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    app.cleanup_ctx.append(loop_ctx)
    return app


def run_process(
    settings: ServiceSettings,
    name: str,
    make_body: Callable[[CollectorRegistry], LoopBody],
) -> None:
    """Entry point of a background process: logs, health listener, loop; exit 1 if it died."""
    configure_logging(settings.log, service=settings.service_name)
    registry = CollectorRegistry()
    app = create_process_app(settings, name, make_body(registry), registry=registry)

    async def main() -> None:
        await serve(app, settings.http, stop=app[STOP_KEY])

    run(main, use_uvloop=settings.http.use_uvloop)
    if app[FAILED_KEY]:
        sys.exit(1)


async def connect_postgres(
    settings: PostgresSettings, stop: asyncio.Event, beat: Heartbeat, *, retry_s: float = 1.0
) -> asyncpg.Pool | None:
    """A migrated pool, retrying until PostgreSQL answers; None when stopped first."""
    import asyncpg

    from urr_common.clients import create_postgres_pool
    from urr_ticket_worker.schema import migrate

    # With min_connections=0 the pool opens its first connection in ``migrate``: a server that
    # is down, or whose certificate is refused (ssl errors are OSErrors), shows up there.
    unreachable = (OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError)
    while not stop.is_set():
        try:
            pool = await create_postgres_pool(settings)
        except (OSError, asyncpg.PostgresError) as exc:
            beat.failed(exc)
            _LOG.warning("postgres_unavailable", error=repr(exc))
            await sleep_unless_stopped(stop, retry_s)
            continue
        try:
            await migrate(pool)
        except unreachable as exc:
            await pool.close()
            beat.failed(exc)
            _LOG.warning("postgres_unavailable", error=repr(exc))
            await sleep_unless_stopped(stop, retry_s)
            continue
        except BaseException:
            await pool.close()
            raise
        return pool
    return None


class ProducerHolder:
    """A Kafka producer started on first use and dropped after a failure, so the next use
    starts a fresh one (a producer that lost its broker may not recover by itself)."""

    def __init__(self, settings: KafkaSettings) -> None:
        # One record at a time, each acknowledged: no batching delay.
        self._settings = settings.model_copy(update={"linger_ms": 0})
        self._producer: AIOKafkaProducer | None = None

    async def get(self) -> AIOKafkaProducer:
        if self._producer is None:
            from urr_common.clients import kafka_producer

            producer = kafka_producer(self._settings)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def reset(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
