"""argon2id password hashing off the event loop, with a constant-cost path for unknown users.

A hash costs tens of milliseconds of CPU and ``memory_cost`` of RAM, so it runs on a small
dedicated thread pool (argon2's C code releases the GIL): the loop keeps serving, and the pool
size caps how much memory concurrent logins can take.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from urr_auth.settings import Argon2Settings


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a password against a stored hash."""

    matches: bool
    #: The hash was made with other parameters than today's; store a fresh one.
    needs_rehash: bool = False


def password_hasher(settings: Argon2Settings) -> PasswordHasher:
    return PasswordHasher(
        time_cost=settings.time_cost,
        memory_cost=settings.memory_cost_kib,
        parallelism=settings.parallelism,
        hash_len=settings.hash_len,
        salt_len=settings.salt_len,
        type=Type.ID,
    )


class Passwords:
    """Hash and verify passwords on a bounded thread pool; ``close()`` when done."""

    def __init__(
        self,
        settings: Argon2Settings,
        *,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._hasher = password_hasher(settings)
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrent_hashes, thread_name_prefix="argon2"
        )
        self._dummy_hash: str | None = None
        #: Called from the worker thread with ("hash" | "verify", seconds spent in argon2).
        self._observe = observe

    async def start(self) -> None:
        """Make the hash unknown e-mails are checked against, with today's parameters."""
        self._dummy_hash = await self.hash(secrets.token_urlsafe(24))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed_hash, password)

    async def verify(self, stored_hash: str, password: str) -> Verification:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify, stored_hash, password)

    async def verify_unknown_user(self, password: str) -> Verification:
        """Spend what a real check costs, so a wrong e-mail is not faster than a wrong password.

        The result is always a mismatch; it is computed anyway (never skipped) so the timing
        and the thread-pool pressure match those of a known user.
        """
        if self._dummy_hash is None:
            raise RuntimeError("Passwords.start() was not awaited")
        await self.verify(self._dummy_hash, password)
        return Verification(matches=False)

    def _timed_hash(self, password: str) -> str:
        started = time.perf_counter()
        try:
            return self._hasher.hash(password)
        finally:
            self._observed("hash", started)

    def _verify(self, stored_hash: str, password: str) -> Verification:
        started = time.perf_counter()
        try:
            self._hasher.verify(stored_hash, password)
        except VerifyMismatchError:
            return Verification(matches=False)
        except (VerificationError, InvalidHashError):
            # A corrupt stored hash refuses the login rather than failing the request.
            return Verification(matches=False)
        finally:
            self._observed("verify", started)
        return Verification(matches=True, needs_rehash=self._hasher.check_needs_rehash(stored_hash))

    def _observed(self, operation: str, started: float) -> None:
        if self._observe is not None:
            self._observe(operation, time.perf_counter() - started)
