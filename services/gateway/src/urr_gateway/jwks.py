"""Public keys of a token issuer, fetched from its JWKS and cached by ``kid``.

The hot path never waits for the network while the key it needs is known. An unknown ``kid``
(a key rotated in) triggers one fetch, shared by every request that needs it (one in-flight
fetch, no thundering herd), and at most one per ``min_refetch_interval_s``: in between, the
unknown kid is answered from memory (negative caching), so a client sending random kids
cannot make the gateway hammer the issuer. Keys older than ``max_age_s`` are refreshed in the
background, so a key withdrawn from the JWKS stops being trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from urr_common.logs import get_logger
from urr_common.tokens import KeyMaterialError, KeySet, VerificationKey

_LOG = get_logger(__name__)

#: A key set is a few hundred bytes per key; anything near this is not a JWKS.
MAX_JWKS_BYTES = 64 * 1024

JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]
#: Called after every fetch with ``"ok"`` or ``"error"`` (metrics).
FetchObserver = Callable[[str], None]


class KeysUnavailable(Exception):
    """The key a token names is unknown and the JWKS could not be fetched to learn it."""


def http_jwks_fetcher(
    session: Callable[[], aiohttp.ClientSession], url: str, timeout_s: float
) -> JwksFetcher:
    """Fetch ``url`` with the shared session (looked up at call time: it opens at startup)."""

    async def fetch() -> Mapping[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session().get(url, timeout=timeout, allow_redirects=False) as response:
            if response.status != 200:
                raise KeyMaterialError(f"JWKS answered HTTP {response.status}")
            raw = await response.content.read(MAX_JWKS_BYTES + 1)
        if len(raw) > MAX_JWKS_BYTES:
            raise KeyMaterialError("the JWKS document is too large")
        document = json.loads(raw)
        if not isinstance(document, Mapping):
            raise KeyMaterialError("the JWKS document is not an object")
        return document

    return fetch


class JwksKeySource:
    """Keys by ``kid``: fixed ones (PEM files) plus those of the last good JWKS fetch."""

    def __init__(
        self,
        name: str,
        fetch: JwksFetcher | None,
        static_keys: Iterable[VerificationKey] = (),
        *,
        min_refetch_interval_s: float = 30.0,
        max_age_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        observer: FetchObserver | None = None,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self._static = list(static_keys)
        self._keys = KeySet(self._static)
        self._min_interval = min_refetch_interval_s
        self._max_age = max_age_s
        self._clock = clock
        self._observer = observer
        self._last_attempt: float | None = None
        self._last_success: float | None = None
        self._last_failed = False
        self._inflight: asyncio.Task[bool] | None = None

    @property
    def keys(self) -> KeySet:
        return self._keys

    async def key_for(self, kid: str) -> VerificationKey | None:
        """The key named ``kid``; ``None`` if the issuer does not publish it.

        Raises ``KeysUnavailable`` when the key is unknown and the JWKS cannot be fetched.
        """
        key = self._keys.get(kid)
        if key is not None:
            self._refresh_if_stale()
            return key
        if self._fetch is None:
            return None
        if self._inflight is None and self._recently_attempted():
            if self._last_failed:
                raise KeysUnavailable(f"{self.name} keys could not be fetched")
            return None
        if not await self.refresh():
            raise KeysUnavailable(f"{self.name} keys could not be fetched")
        return self._keys.get(kid)

    async def refresh(self) -> bool:
        """Fetch the JWKS now (joining a fetch already in flight); ``True`` on success."""
        if self._fetch is None:
            return True
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._fetch_once())
        # Shielded: a request that gives up (client gone) must not cancel everyone's fetch.
        return await asyncio.shield(self._inflight)

    async def close(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _recently_attempted(self) -> bool:
        return (
            self._last_attempt is not None
            and self._clock() - self._last_attempt < self._min_interval
        )

    def _refresh_if_stale(self) -> None:
        if self._fetch is None or self._inflight is not None:
            return
        reference = self._last_success if self._last_success is not None else self._last_attempt
        if reference is not None and self._clock() - reference < self._max_age:
            return
        if self._recently_attempted():
            return
        self._inflight = asyncio.create_task(self._fetch_once())

    async def _fetch_once(self) -> bool:
        fetch = self._fetch
        if fetch is None:
            return True
        self._last_attempt = self._clock()
        try:
            document = await fetch()
            fetched = KeySet.from_jwks(document)
        except Exception as exc:  # any failure means "no new keys"; the old ones stay
            if not self._last_failed:
                _LOG.warning("jwks_fetch_failed", source=self.name, error=repr(exc)[:200])
            self._last_failed = True
            self._notify("error")
            return False
        finally:
            self._inflight = None
        keys = KeySet(self._static)
        for key in fetched:
            keys.add(key)
        self._keys = keys
        self._last_success = self._clock()
        if self._last_failed:
            _LOG.info("jwks_fetch_recovered", source=self.name)
        self._last_failed = False
        self._notify("ok")
        return True

    def _notify(self, outcome: str) -> None:
        if self._observer is not None:
            self._observer(outcome)
