"""``python -m urr_auth [serve]`` runs the server; ``create-admin`` makes an admin account;
``seed-demo-accounts`` makes the local stack's named demo buyers (local and test only)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence
from typing import TextIO

import asyncpg

from urr_auth.accounts import Accounts
from urr_auth.app import create_app
from urr_auth.credentials import check_password, normalise_email
from urr_auth.passwords import Passwords
from urr_auth.settings import AuthSettings
from urr_auth.users import EmailTaken, UserStore, UserStoreUnavailable, migrate
from urr_common.clients import open_postgres
from urr_common.logs import configure_logging
from urr_common.migrations import MigrationError
from urr_common.service import run, serve
from urr_common.settings import SettingsError, load_settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(AuthSettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    if args.command == "seed-demo-accounts":
        configure_logging(settings.log, service=settings.service_name, stream=sys.stderr)
        return seed_demo_accounts(settings)
    if args.command == "create-admin":
        # stdout carries the tool's one-line answer; logs go to stderr.
        configure_logging(settings.log, service=settings.service_name, stream=sys.stderr)
        return create_admin(settings, args.email, password_stdin=args.password_stdin)
    configure_logging(settings.log, service=settings.service_name)
    run(lambda: serve(create_app(settings), settings.http), use_uvloop=settings.http.use_uvloop)
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m urr_auth",
        description="URR auth service. Settings come from URR_* environment variables.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the HTTP server (the default)")
    admin = commands.add_parser(
        "create-admin", help="create an admin account, or make an existing one admin"
    )
    admin.add_argument("--email", required=True)
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of a prompt",
    )
    commands.add_parser(
        "seed-demo-accounts",
        help=f"create the demo buyers ({DEMO_ACCOUNTS[0]} ...) with a known password; "
        "refused outside local and test",
    )
    return parser


#: Named buyers for trying the crowd on a laptop (one per browser). Their password is public
#: (README), which is why only a local or test environment may have them.
DEMO_ACCOUNTS = tuple(f"fan{n}@demo.urr.test" for n in range(1, 7))
DEMO_PASSWORD = "urr-demo-fan"  # noqa: S105 - published on purpose, local stacks only


def seed_demo_accounts(settings: AuthSettings) -> int:
    """Create each demo account that does not exist yet (an existing one is left as it is)."""
    if settings.environment not in ("local", "test"):
        print(
            f"error: demo accounts have a published password; refused in {settings.environment}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        created = asyncio.run(_seed_demo(settings))
    except (UserStoreUnavailable, OSError, asyncpg.PostgresError, MigrationError) as exc:
        print(f"error: PostgreSQL refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"demo accounts: {', '.join(DEMO_ACCOUNTS)} (password {DEMO_PASSWORD}); "
        f"{len(created)} created now"
    )
    return EXIT_OK


async def _seed_demo(settings: AuthSettings) -> list[str]:
    passwords = Passwords(settings.argon2)
    created: list[str] = []
    try:
        async with open_postgres(settings.postgres) as pool:
            await migrate(pool)
            accounts = Accounts(UserStore(pool), passwords)
            for number, email in enumerate(DEMO_ACCOUNTS, start=1):
                try:
                    await accounts.register(email, DEMO_PASSWORD, f"Demo fan {number}")
                except EmailTaken:
                    continue
                created.append(email)
    finally:
        passwords.close()
    return created


def create_admin(
    settings: AuthSettings, email: str, *, password_stdin: bool, stdin: TextIO | None = None
) -> int:
    """Validate, then upsert the admin through the same ``Accounts.ensure_admin`` as start-up."""
    try:
        address = normalise_email(email)
        password = check_password(_read_password(password_stdin, stdin or sys.stdin))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        created = asyncio.run(_ensure_admin(settings, address, password))
    except (UserStoreUnavailable, OSError, asyncpg.PostgresError, MigrationError) as exc:
        print(f"error: PostgreSQL refused: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{'created' if created else 'updated'} admin {address}")
    return EXIT_OK


def _read_password(from_stdin: bool, stdin: TextIO) -> str:
    if from_stdin:
        line = stdin.readline()
        if not line:
            raise ValueError("no password on standard input")
        return line.removesuffix("\n").removesuffix("\r")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise ValueError("the passwords differ")
    return first


async def _ensure_admin(settings: AuthSettings, email: str, password: str) -> bool:
    passwords = Passwords(settings.argon2)
    try:
        async with open_postgres(settings.postgres) as pool:
            await migrate(pool)
            _, created = await Accounts(UserStore(pool), passwords).ensure_admin(email, password)
            return created
    finally:
        passwords.close()
