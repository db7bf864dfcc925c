"""Account operations: register, authenticate, make an admin. HTTP-free, so the server, the
start-up bootstrap and the command-line tool share one code path.
"""

from __future__ import annotations

from urr_auth.credentials import check_password, normalise_email
from urr_auth.passwords import Passwords
from urr_auth.users import User, UserStore, UserStoreUnavailable
from urr_common.logs import get_logger

_LOG = get_logger(__name__)


class Accounts:
    def __init__(self, store: UserStore, passwords: Passwords) -> None:
        self.store = store
        self.passwords = passwords

    async def register(self, email: str, password: str, display_name: str | None) -> User:
        """A new ``user`` account; ``EmailTaken`` when the address is in use.

        The hash is computed before the insert, so a duplicate costs the same as a success
        and nothing is written when it fails.
        """
        password_hash = await self.passwords.hash(password)
        return await self.store.create(email, password_hash, display_name)

    async def authenticate(self, email: str, password: str) -> User | None:
        """The user when the password matches, else ``None``.

        An unknown address still pays for one full argon2 verification against a dummy
        hash, so the answer's timing does not tell which addresses have accounts.
        """
        found = await self.store.credentials_by_email(email)
        if found is None:
            await self.passwords.verify_unknown_user(password)
            return None
        outcome = await self.passwords.verify(found.password_hash, password)
        if not outcome.matches:
            return None
        if outcome.needs_rehash:
            await self._rehash(found.user, found.password_hash, password)
        return found.user

    async def _rehash(self, user: User, old_hash: str, password: str) -> None:
        """Upgrade a hash to today's parameters; best effort, the login succeeds regardless."""
        fresh = await self.passwords.hash(password)
        try:
            if await self.store.replace_password_hash(user.id, old_hash, fresh):
                _LOG.info("password_rehashed", user_id=str(user.id))
        except UserStoreUnavailable:
            _LOG.warning("password_rehash_deferred", user_id=str(user.id))

    async def ensure_admin(self, email: str, password: str) -> tuple[User, bool]:
        """Create ``email`` as an admin, or make the existing account admin with ``password``.

        Returns the user and whether it was created. Validates like registration does.
        """
        address = normalise_email(email)
        password_hash = await self.passwords.hash(check_password(password))
        user, created = await self.store.upsert_admin(address, password_hash)
        _LOG.info("admin_ensured", user_id=str(user.id), created=created)
        return user, created
