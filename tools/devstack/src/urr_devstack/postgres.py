"""A private PostgreSQL from the installed binaries, and the ``urr`` database on any server.

PostgreSQL refuses to run as root, so when we are root the cluster is initialised and run as
an unprivileged OS user (``postgres`` by default) through ``Popen(user=...)``: no ``su`` or
``runuser`` process sits between us and the postmaster, so our signals reach it directly.
The server listens on TCP only (no Unix socket), with trust authentication on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from urr_devstack.procs import ServerProcess

#: Settings that make a throw-away test cluster fast; never used for ``make up``'s data.
FAST_UNSAFE_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresSetupError(RuntimeError):
    """A private PostgreSQL cannot be set up; the message says what to install or change."""


def find_bin_dir(configured: Path | None = None) -> Path:
    """The folder holding ``initdb`` and ``postgres``: configured, newest Debian one, or PATH."""
    if configured is not None:
        candidates = [configured]
    else:
        versions = sorted(
            Path("/usr/lib/postgresql").glob("*/bin"),
            key=lambda path: _version_key(path.parent.name),
            reverse=True,
        )
        on_path = shutil.which("initdb")
        candidates = [*versions, *([Path(on_path).parent] if on_path else [])]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise PostgresSetupError(
        "no PostgreSQL server binaries (initdb, postgres) found: install the postgresql "
        "package, or set URR_DEVSTACK__POSTGRES_BIN_DIR to the folder holding them"
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def run_as_user(os_user: str) -> str | None:
    """The OS user to run PostgreSQL as: ``os_user`` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(os_user)
    except KeyError as exc:
        raise PostgresSetupError(
            f"we run as root and PostgreSQL refuses to; the OS user {os_user!r} to run it as "
            "does not exist (set URR_DEVSTACK__POSTGRES_OS_USER)"
        ) from exc
    return os_user


def prepare_data_parent(preferred: Path, user: str | None) -> Path:
    """A folder ``user`` can own and write, for the cluster: ``preferred`` when reachable.

    Under root the state folder may sit where the postgres user cannot reach (``/root``); then
    a folder under the system temp dir named after ``preferred`` is used, so every start of
    the same checkout finds the same data.
    """
    preferred.mkdir(parents=True, exist_ok=True)
    if user is None:
        return preferred
    entry = pwd.getpwnam(user)
    os.chown(preferred, entry.pw_uid, entry.pw_gid)
    if _user_can_write(preferred, user):
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    fallback = Path(tempfile.gettempdir()) / f"urr-postgres-{digest}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    os.chown(fallback, entry.pw_uid, entry.pw_gid)
    return fallback


def _user_can_write(folder: Path, user: str) -> bool:
    # os.access answers for us, not for the postgres user: ask the kernel as that user.
    result = subprocess.run(  # noqa: S603 - fixed argv
        ["/usr/bin/test", "-w", str(folder), "-a", "-x", str(folder)],
        user=user,
        group=pwd.getpwnam(user).pw_gid,
        extra_groups=[],
        check=False,
    )
    return result.returncode == 0


def init_cluster(bin_dir: Path, data_dir: Path, *, superuser: str, os_user: str | None) -> bool:
    """Run ``initdb`` unless ``data_dir`` already holds a cluster; True when it created one."""
    version_file = data_dir / "PG_VERSION"
    if version_file.exists():
        _check_major_version(bin_dir, version_file)
        return False
    argv = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", superuser]
    argv += ["--auth=trust", "--encoding=UTF8", "--no-sync", "--no-instructions"]
    result = subprocess.run(  # noqa: S603 - argv built by us
        argv,
        capture_output=True,
        user=os_user,
        group=None if os_user is None else pwd.getpwnam(os_user).pw_gid,
        extra_groups=None if os_user is None else [],
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise PostgresSetupError(f"initdb failed for {data_dir}:\n{output}")
    return True


def _check_major_version(bin_dir: Path, version_file: Path) -> None:
    found = version_file.read_text().strip()
    wanted = subprocess.run(  # noqa: S603 - argv built by us
        [str(bin_dir / "postgres"), "--version"], capture_output=True, check=True, text=True
    ).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", wanted)
    if match and match.group(1) != found:
        raise PostgresSetupError(
            f"{version_file.parent} holds a PostgreSQL {found} cluster but the binaries in "
            f"{bin_dir} are version {match.group(1)}: remove the folder or point "
            "URR_DEVSTACK__POSTGRES_BIN_DIR at matching binaries"
        )


def postgres_server(
    bin_dir: Path,
    data_dir: Path,
    port: int,
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    os_user: str | None = None,
    settings: dict[str, str] | None = None,
    start_timeout_s: float = 30.0,
) -> ServerProcess:
    """The postmaster for ``data_dir``, TCP only on ``host:port``; SIGINT stops it fast."""
    argv = [str(bin_dir / "postgres"), "-D", str(data_dir), "-p", str(port), "-h", host]
    # No Unix socket: its default folder may not exist or be writable for the user.
    argv += ["-c", "unix_socket_directories=", "-c", "max_connections=200"]
    for name, value in (settings or {}).items():
        argv += ["-c", f"{name}={value}"]
    return ServerProcess(
        "postgres",
        argv,
        port,
        log_path,
        env={"LC_ALL": "C.UTF-8"},
        start_timeout_s=start_timeout_s,
        user=os_user,
        stop_signal=signal.SIGINT,
        cwd=data_dir,
        host=host,
    )


def private_postgres(
    parent: Path,
    port: int,
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    superuser: str = "postgres",
    bin_dir: Path | None = None,
    os_user: str = "postgres",
    settings: dict[str, str] | None = None,
    start_timeout_s: float = 30.0,
) -> ServerProcess:
    """A cluster under ``parent`` (initialised on first use), ready to ``start()``.

    The one way both ``make up`` and the test fixtures get a PostgreSQL of their own.
    """
    binaries = find_bin_dir(bin_dir)
    run_as = run_as_user(os_user)
    data_dir = prepare_data_parent(parent, run_as) / "data"
    init_cluster(binaries, data_dir, superuser=superuser, os_user=run_as)
    return postgres_server(
        binaries,
        data_dir,
        port,
        log_path,
        host=host,
        os_user=run_as,
        settings=settings,
        start_timeout_s=start_timeout_s,
    )


def dsn(host: str, port: int, user: str, database: str) -> str:
    return f"postgresql://{user}@{host}:{port}/{database}"


async def wait_accepting(admin_dsn: str, timeout_s: float) -> None:
    """Wait until the server accepts a session (it listens before recovery has finished)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            connection = await asyncpg.connect(admin_dsn, timeout=2)
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            await connection.close()
            return


async def check_server(admin_dsn: str) -> None:
    """Connect and run ``SELECT 1``; raises with the server's own reason when it cannot."""
    connection = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        await connection.fetchval("SELECT 1")
    finally:
        await connection.close()


async def ensure_database(admin_dsn: str, name: str) -> bool:
    """Create database ``name`` unless it exists; True when created. Safe to run concurrently."""
    connection = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await connection.execute(f"CREATE DATABASE {quoted}")
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            # Another starter won the race between our check and our CREATE.
            return False
        return True
    finally:
        await connection.close()


async def set_synchronous_commit(admin_dsn: str, name: str, value: str) -> None:
    """Make ``synchronous_commit`` of every new session on database ``name`` be ``value``.

    Set on the database, not the server: a PostgreSQL the stack reuses keeps its other
    databases as they are. Applied at every ``up``, so the database always says what the
    stack's settings say (an earlier ``off`` does not linger after ``on`` is chosen).
    """
    if value not in ("on", "off"):
        raise ValueError(f"synchronous_commit {value!r}: on or off")
    connection = await asyncpg.connect(admin_dsn, timeout=5)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await connection.execute(f"ALTER DATABASE {quoted} SET synchronous_commit = {value}")
    finally:
        await connection.close()
