"""The verified-token cache: bounded, keyed by hash, never past exp or its TTL."""

from __future__ import annotations

from urr_gateway.tokencache import TokenDigests, VerifiedTokenCache, token_digest


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


def test_connection_digests_are_the_token_digests_by_exact_text_and_bounded():
    digests = TokenDigests()
    first = digests.digest("header.payload.signature")
    assert first == token_digest("header.payload.signature")
    # One character apart, or a prefix: another token, another digest.
    assert digests.digest("header.payload.signaturE") == token_digest("header.payload.signaturE")
    assert digests.digest("header.payload.signatur") != first
    assert digests.digest("header.payload.signature") == first
    # Read on the instance: compiled, the class attribute is a slot's descriptor.
    for index in range(digests.MAX_TOKENS + 2):
        assert digests.digest(f"t{index}") == token_digest(f"t{index}")
    assert len(digests._shown) == digests.MAX_TOKENS


def test_a_remembered_digest_does_not_keep_an_expired_token_valid():
    clock = Clock()
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10, ttl_s=30, clock=clock)
    digests = TokenDigests()
    cache.put("t", "identity", expires_at=clock.now + 5, digest=digests.digest("t"))
    assert cache.get("t", digests.digest("t")) == "identity"
    clock.now += 5
    assert cache.get("t", digests.digest("t")) is None  # its exp: gone, digest or not
