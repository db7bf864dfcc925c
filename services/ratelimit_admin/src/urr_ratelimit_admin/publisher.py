"""Publishing the policy set and token revocations to Redis, where every limiter reads them.

A change is committed to PostgreSQL first; then the whole set goes to one Redis hash under its
version (a compare-and-set script, so an older set never replaces a newer one) and the version
is announced on a channel, which limiters subscribe to. A publish that fails (Redis down) is
repeated by the periodic republish, so Redis catches up with PostgreSQL within one period
after it returns, restarts included.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from urr_common.ratelimit_policies import (
    POLICY_CHANNEL,
    POLICY_SET_KEY,
    PolicySet,
    revoked_access_token_key,
)
from urr_ratelimit_admin.local_trial import for_local_trial

if TYPE_CHECKING:
    from redis.asyncio import Redis

_SCRIPT = (files("urr_ratelimit_admin") / "publish_policies.lua").read_text(encoding="utf-8")


class PolicyPublisher:
    def __init__(self, redis: Redis, *, trial_browsers: int = 1) -> None:
        """``trial_browsers``: the local trial's factor (``local_trial``); 1 publishes the
        policies exactly as stored."""
        self._redis = redis
        self._script: Any = redis.register_script(_SCRIPT)
        self._trial_browsers = trial_browsers

    async def publish(self, policies: PolicySet) -> bool:
        """True when this set is now the published one (False: a newer one already is)."""
        policies = for_local_trial(policies, self._trial_browsers)
        done = await self._script(
            keys=[POLICY_SET_KEY],
            args=[policies.version, policies.model_dump_json(), POLICY_CHANNEL],
        )
        return bool(done)

    async def published_version(self) -> int:
        value = await self._redis.hget(POLICY_SET_KEY, "version")
        return int(value) if value is not None else -1

    async def revoke(self, jti: str, expires_at: datetime) -> None:
        remaining_ms = int((expires_at - datetime.now(UTC)).total_seconds() * 1000)
        if remaining_ms > 0:
            await self._redis.set(revoked_access_token_key(jti), b"1", px=remaining_ms)
