"""Following the published rate-limit configuration (``ratelimit_admin`` publishes it).

Mechanism: versioned configuration in Redis plus a change notification. Each process
(every gateway worker; the check API shares its worker's copy) loads the ``PolicySet`` from
the hash ``ratelimit:policies`` at start, subscribes to ``ratelimit:policies:changed`` and
re-reads on every message, and also reads the version alone every ``policy_poll_s``
(0.25 s), so a lost message or a dropped subscription still converges well within 1 s.
A new version is compiled once (``tenant.CompiledPolicies``) and swapped in whole; requests
read the current one without any I/O: API-key digests, quotas and revoked access-token
``jti``s are in the same document, so they are as fresh as the policies (at most one poll
period stale).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from pydantic import ValidationError

from urr_common.logs import get_logger
from urr_common.ratelimit_policies import POLICY_CHANNEL, POLICY_SET_KEY, PolicySet
from urr_common.service import sleep_unless_stopped
from urr_gateway.ratelimit.tenant import CompiledPolicies

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

_LOG = get_logger(__name__)

Listener = Callable[[CompiledPolicies], None]


class PolicyWatcher:
    """The current published configuration of this process, kept up to date."""

    def __init__(self, redis: Redis | RedisCluster, *, poll_s: float = 0.25) -> None:
        self._redis = redis
        self._poll_s = poll_s
        #: Until a set is read: the seed categories, marked unpublished.
        self.current = CompiledPolicies.seed()
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Reloads done (a test can wait for one).
        self.reloads = 0

    def on_change(self, listener: Listener) -> None:
        """``listener(compiled)`` runs, synchronously, before a new version becomes current."""
        self._listeners.append(listener)

    def is_revoked(self, jti: str) -> bool:
        return jti in self.current.revoked_jtis

    async def refresh(self) -> bool:
        """Read the version; on a new one read and apply the set. True when it changed."""
        async with self._lock:
            version = await self._redis.hget(POLICY_SET_KEY, "version")
            if version is None or int(version) == self.current.version:
                return False
            fields = await self._redis.hmget(POLICY_SET_KEY, ["version", "set"])
            if fields[1] is None:
                return False
            try:
                published = PolicySet.model_validate_json(fields[1])
            except ValidationError as exc:
                # Kept on the last good set; the admin service validates what it publishes.
                _LOG.error("ratelimit_policy_set_invalid", error=str(exc)[:500])
                return False
            if published.version == self.current.version:
                return False
            compiled = CompiledPolicies(published, published_set=True)
            for listener in self._listeners:
                listener(compiled)
            self.current = compiled
            self.reloads += 1
            _LOG.info("ratelimit_policies_loaded", version=compiled.version)
            return True

    async def start(self, timeout_s: float = 2.0) -> None:
        """Load now (without holding up start-up past ``timeout_s``), then follow changes."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.refresh()
        except Exception as exc:  # Redis down at start: the poll loop catches up
            _LOG.warning("ratelimit_policies_load_failed", error=f"{type(exc).__name__}: {exc}")
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._poll())]
        if hasattr(self._redis, "pubsub"):
            self._tasks.append(asyncio.create_task(self._listen()))

    async def stop(self) -> None:
        """Both loops notice the stop within a poll period; a subscription read that does not
        end (redis-py may hold a cancelled read open) is cancelled and left behind."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(self._poll_s, 0.5) * 2)
            for task in pending:
                task.cancel()

    async def _poll(self) -> None:
        while not self._stop.is_set():
            await self._refresh_logged()
            await sleep_unless_stopped(self._stop, self._poll_s)

    async def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(POLICY_CHANNEL)
                    while not self._stop.is_set():
                        message = await pubsub.get_message(timeout=self._poll_s)
                        if message is not None and message.get("type") == "message":
                            await self._refresh_logged()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the poll loop keeps us current meanwhile
                _LOG.warning("ratelimit_policy_channel_lost", error=f"{type(exc).__name__}: {exc}")
            await sleep_unless_stopped(self._stop, 1.0)

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # Redis away: the next poll tries again
            _LOG.debug("ratelimit_policy_refresh_failed", error=f"{type(exc).__name__}: {exc}")


def install_policy_watcher(app: web.Application, watcher: PolicyWatcher) -> None:
    """Start following the configuration when ``app`` starts, stop at its cleanup."""

    async def following(_: web.Application) -> AsyncIterator[None]:
        await watcher.start()
        try:
            yield
        finally:
            await watcher.stop()

    # A cleanup context, not ``on_cleanup``: contexts close in reverse order of their start,
    # so the watcher stops before the app's Redis client (started earlier) closes under it;
    # an ``on_cleanup`` receiver ran after that close, and the subscription's loss was
    # logged as a warning on every shutdown.
    app.cleanup_ctx.append(following)
