"""Several browsers on one laptop (issue 21 item 5): the published AUTH policy is widened by
the local trial's factor, nothing stored changes, and the setting is refused outside local."""

from __future__ import annotations

import asyncpg
import pytest
from redis.asyncio import Redis

from urr_common.ratelimit_policies import POLICY_SET_KEY, PolicySet, default_policies
from urr_common.settings import SettingsError, load_settings
from urr_ratelimit_admin import store
from urr_ratelimit_admin.local_trial import for_local_trial
from urr_ratelimit_admin.publisher import PolicyPublisher
from urr_ratelimit_admin.settings import RatelimitAdminSettings


def _limits(policies: PolicySet) -> dict[str, int]:
    return {p.id: p.windows[0].limit for p in policies.policies}


def test_only_the_per_address_default_policy_is_widened() -> None:
    seeded = PolicySet(version=3, policies=tuple(default_policies()))
    assert for_local_trial(seeded, 1) is seeded
    widened = _limits(for_local_trial(seeded, 6))
    assert widened == {**_limits(seeded), "auth": 6 * _limits(seeded)["auth"]}
    tenant_auth = default_policies()[0].model_copy(update={"tenant": "acme"})
    own = PolicySet(version=3, policies=(tenant_auth,))
    assert _limits(for_local_trial(own, 6)) == _limits(own)  # a tenant's policy is its own


async def test_the_published_set_is_widened_and_the_stored_one_is_not(
    postgres_dsn: str, redis_url: str
) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    assert pool is not None
    redis = Redis.from_url(redis_url)
    try:
        await store.migrate(pool)
        async with pool.acquire() as conn:
            await store.seed_default_policies(conn)
            stored = await store.published_config(conn)
        assert await PolicyPublisher(redis, trial_browsers=5).publish(stored)
        raw = await redis.hget(POLICY_SET_KEY, "set")
        assert raw is not None
        assert _limits(PolicySet.model_validate_json(raw))["auth"] == 5 * 20
        async with pool.acquire() as conn:
            assert _limits(await store.policy_set(conn))["auth"] == 20
    finally:
        await redis.aclose()
        await pool.close()


@pytest.mark.parametrize("environment", ["staging", "prod"])
def test_the_trial_is_refused_outside_local(environment: str) -> None:
    with pytest.raises(SettingsError, match="URR_LOCAL_TRIAL__BROWSERS"):
        load_settings(RatelimitAdminSettings, environment=environment, local_trial={"browsers": 4})
    assert load_settings(RatelimitAdminSettings, environment=environment).local_trial.browsers == 1
    assert (
        load_settings(
            RatelimitAdminSettings, environment="local", local_trial={"browsers": 4}
        ).local_trial.browsers
        == 4
    )


def test_the_trial_factor_is_bounded() -> None:
    for bad in (0, 51):
        with pytest.raises(SettingsError):
            load_settings(RatelimitAdminSettings, local_trial={"browsers": bad})
