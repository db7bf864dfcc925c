"""Token verification with cached keys and cached results, shared by the two token filters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from urr_common.tokens import TokenError, TokenRejection, TokenVerifier, unverified_header
from urr_gateway.jwks import JwksKeySource
from urr_gateway.tokencache import VerifiedTokenCache

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
    ) -> None:
        self._source = source
        self._verifier = verifier
        self._convert = convert
        self._cache = cache

    @property
    def source(self) -> JwksKeySource:
        return self._source

    async def verify(self, token: str) -> T:
        """The converted claims; ``TokenError`` or ``jwks.KeysUnavailable`` otherwise."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        kid = unverified_header(token).get("kid")
        if not isinstance(kid, str):
            raise TokenError(TokenRejection.UNKNOWN_KEY, "the header names no kid")
        if await self._source.key_for(kid) is None:
            raise TokenError(TokenRejection.UNKNOWN_KEY, "the issuer publishes no such key")
        self._verifier.keys = self._source.keys
        claims = self._verifier.verify(token)
        value = self._convert(claims)
        self._cache.put(token, value, expires_at=float(claims["exp"]))
        return value
