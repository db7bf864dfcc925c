"""The verified-token cache: bounded, keyed by hash, never past exp or its TTL."""

from __future__ import annotations

from urr_gateway.tokencache import VerifiedTokenCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_hit_until_the_ttl():
    clock = Clock()
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10, ttl_s=30, clock=clock)
    cache.put("t", "identity", expires_at=clock.now + 900)
    assert cache.get("t") == "identity"
    clock.now += 29.9
    assert cache.get("t") == "identity"
    clock.now += 0.2
    assert cache.get("t") is None
    assert len(cache) == 0


def test_never_past_the_token_expiry():
    clock = Clock()
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10, ttl_s=30, clock=clock)
    cache.put("t", "identity", expires_at=clock.now + 5)
    clock.now += 5
    assert cache.get("t") is None
    cache.put("expired", "identity", expires_at=clock.now - 1)
    assert cache.get("expired") is None
    assert len(cache) == 0


def test_bounded_oldest_first():
    clock = Clock()
    cache: VerifiedTokenCache[int] = VerifiedTokenCache(3, ttl_s=30, clock=clock)
    for index in range(5):
        cache.put(f"t{index}", index, expires_at=clock.now + 60)
    assert len(cache) == 3
    assert cache.get("t0") is None
    assert cache.get("t1") is None
    assert [cache.get(f"t{index}") for index in (2, 3, 4)] == [2, 3, 4]


def test_disabled_when_sized_or_timed_to_zero():
    caches: list[VerifiedTokenCache[int]] = [
        VerifiedTokenCache(0, ttl_s=30),
        VerifiedTokenCache(10, ttl_s=0),
    ]
    for cache in caches:
        cache.put("t", 1, expires_at=10**12)
        assert cache.get("t") is None


def test_the_raw_token_is_not_kept():
    cache: VerifiedTokenCache[int] = VerifiedTokenCache(10, ttl_s=30)
    cache.put("secret-token", 1, expires_at=10**12)
    assert all(isinstance(key, bytes) and len(key) == 32 for key in cache._entries)
