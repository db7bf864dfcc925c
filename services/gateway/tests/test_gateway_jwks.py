"""The JWKS key source: cache by kid, one fetch in flight, refetch rate-limited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from urr_common.tokens import KeySet, SigningKey
from urr_gateway.jwks import JwksKeySource, KeysUnavailable


class FakeIssuer:
    """Counts fetches; ``gate`` lets a test hold a fetch open."""

    def __init__(self, *kids: str) -> None:
        self.keys = [SigningKey.generate(kid) for kid in kids]
        self.fetches = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("issuer down")
        return KeySet(key.verification_key() for key in self.keys).to_jwks()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _source(issuer: FakeIssuer, clock: Clock, **kwargs: Any) -> JwksKeySource:
    return JwksKeySource(
        "test", issuer.fetch, min_refetch_interval_s=30, max_age_s=300, clock=clock, **kwargs
    )


async def _kid(source: JwksKeySource, kid: str) -> str | None:
    key = await source.key_for(kid)
    return key.kid if key is not None else None


async def test_known_kid_is_served_from_memory():
    issuer, clock = FakeIssuer("k1"), Clock()
    source = _source(issuer, clock)
    assert await _kid(source, "k1") == "k1"
    for _ in range(50):
        assert await _kid(source, "k1") == "k1"
    assert issuer.fetches == 1


async def test_unknown_kid_refetches_once_then_is_negatively_cached():
    issuer, clock = FakeIssuer("k1"), Clock()
    source = _source(issuer, clock)
    await source.refresh()
    clock.now += 31
    assert await source.key_for("nope") is None
    assert issuer.fetches == 2
    for _ in range(20):
        assert await source.key_for("nope") is None
    assert issuer.fetches == 2
    clock.now += 31
    assert await source.key_for("nope") is None
    assert issuer.fetches == 3


async def test_rotated_key_is_learned_on_first_use_after_the_interval():
    issuer, clock = FakeIssuer("k1"), Clock()
    source = _source(issuer, clock)
    await source.refresh()
    issuer.keys.append(SigningKey.generate("k2"))
    clock.now += 31
    assert await _kid(source, "k2") == "k2"
    assert issuer.fetches == 2


async def test_concurrent_unknown_kids_share_one_fetch():
    issuer, clock = FakeIssuer("k1"), Clock()
    source = _source(issuer, clock)
    issuer.gate = asyncio.Event()
    waiters = [asyncio.create_task(source.key_for(f"k{i % 3}")) for i in range(100)]
    await asyncio.sleep(0.01)
    issuer.gate.set()
    results = await asyncio.gather(*waiters)
    assert issuer.fetches == 1
    assert {key.kid for key in results if key is not None} == {"k1"}


async def test_an_issuer_that_is_down_is_not_hammered():
    issuer, clock = FakeIssuer("k1"), Clock()
    issuer.fail = True
    source = _source(issuer, clock)
    with pytest.raises(KeysUnavailable):
        await source.key_for("k1")
    for _ in range(10):
        with pytest.raises(KeysUnavailable):
            await source.key_for("k1")
    assert issuer.fetches == 1
    issuer.fail = False
    clock.now += 31
    assert await _kid(source, "k1") == "k1"


async def test_a_failed_refresh_keeps_the_keys_already_known():
    issuer, clock = FakeIssuer("k1"), Clock()
    source = _source(issuer, clock)
    await source.refresh()
    issuer.fail = True
    clock.now += 301
    assert await _kid(source, "k1") == "k1"  # starts a background refresh
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert issuer.fetches == 2
    assert await _kid(source, "k1") == "k1"


async def test_stale_keys_are_refreshed_in_the_background_and_withdrawn_keys_dropped():
    issuer, clock = FakeIssuer("k1", "k2"), Clock()
    source = _source(issuer, clock)
    await source.refresh()
    issuer.keys = issuer.keys[1:]
    clock.now += 301
    assert await _kid(source, "k1") == "k1"  # still known while the refresh runs
    for _ in range(3):
        await asyncio.sleep(0)
    assert issuer.fetches == 2
    assert "k1" not in source.keys
    await source.close()


async def test_static_keys_survive_refreshes():
    issuer, clock = FakeIssuer("k1"), Clock()
    pinned = SigningKey.generate("pinned").verification_key()
    source = _source(issuer, clock, static_keys=[pinned])
    await source.refresh()
    assert {key.kid for key in source.keys} == {"k1", "pinned"}


async def test_a_bad_document_is_a_failed_fetch():
    clock = Clock()

    async def fetch():
        return {"keys": [{"kty": "RSA", "kid": "r"}]}

    source = JwksKeySource("test", fetch, clock=clock)
    assert await source.refresh() is False
    with pytest.raises(KeysUnavailable):
        await source.key_for("r")
