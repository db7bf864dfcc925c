"""Token verification with cached keys and cached results, shared by the two token filters.

Both outcomes are remembered: a verified token's claims until its ``exp`` (``tokencache``),
a refused token's reason for a short while (``refusedcache``), so neither a returning client
nor a repeated forged token costs an ES256 verify.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from urr_common.tokens import TokenError, TokenRejection, TokenVerifier, parse_jws
from urr_gateway.jwks import JwksKeySource
from urr_gateway.refusedcache import RefusedTokenCache
from urr_gateway.tokencache import TokenDigests, VerifiedTokenCache, token_digest

T = TypeVar("T")


class CachedTokenVerifier(Generic[T]):
    """Verify a token (keys by ``kid`` from ``source``) and turn its claims into a ``T``.

    ``convert`` raises ``TokenError`` for claims the caller needs but does not find. The
    result is cached until the token's ``exp``; ``urr_common.tokens.TokenVerifier`` pins the
    algorithm and checks signature, times, issuer and audience.
    """

    def __init__(
        self,
        source: JwksKeySource,
        verifier: TokenVerifier,
        convert: Callable[[dict[str, Any]], T],
        cache: VerifiedTokenCache[T],
        refused: RefusedTokenCache | None = None,
    ) -> None:
        self._source = source
        self._verifier = verifier
        self._convert = convert
        self._cache = cache
        self._refused = refused if refused is not None else RefusedTokenCache(0, 0.0)

    @property
    def source(self) -> JwksKeySource:
        return self._source

    def verify_cached(self, token: str, digests: TokenDigests | None = None) -> T | None:
        """The cached outcome without waiting: the converted claims, ``TokenError`` for a
        token refused a moment ago, ``None`` when ``verify`` has to check it. ``digests``:
        the client connection's digests of the tokens it showed before (else computed)."""
        digest = token_digest(token) if digests is None else digests.digest(token)
        cached = self._cache.get(token, digest)
        if cached is not None:
            return cached
        refused = self._refused.get(digest)
        if refused is not None:
            raise TokenError(refused, "refused a moment ago")
        return None

    async def verify(self, token: str) -> T:
        """The converted claims; ``TokenError`` or ``jwks.KeysUnavailable`` otherwise."""
        cached = self.verify_cached(token)
        if cached is not None:
            return cached
        digest = token_digest(token)
        try:
            value, expires_at = await self._verify(token)
        except TokenError as exc:
            self._refused.put(digest, exc.reason)
            raise
        self._cache.put(token, value, expires_at=expires_at, digest=digest)
        return value

    async def _verify(self, token: str) -> tuple[T, float]:
        # ``TokenVerifier``'s one path (issue 17), parsed once: ``parse_jws`` checks the shape
        # and the header (``alg`` pinned) before the key is looked for, so a token naming
        # another algorithm is refused without fetching the issuer's keys.
        parsed = parse_jws(token)
        if await self._source.key_for(parsed.kid) is None:
            raise TokenError(TokenRejection.UNKNOWN_KEY, "the issuer publishes no such key")
        self._verifier.keys = self._source.keys
        claims = self._verifier.verify_parsed(parsed)
        return self._convert(claims), float(claims["exp"])
