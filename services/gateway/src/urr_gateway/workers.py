"""Run the gateway as N worker processes sharing one port (SO_REUSEPORT).

Each worker is a fresh interpreter (``spawn``) with its own event loop (uvloop when
``URR_HTTP__USE_UVLOOP`` is true), its own upstream session and Redis pool; the kernel
spreads connections across them. Every worker's ``/metrics`` shows the sum over all workers
(prometheus_client's multiprocess mode, in a directory the parent makes and removes). The
parent only supervises: it forwards SIGTERM/SIGINT to
every worker, waits for them to drain, and restarts a worker that dies unexpectedly (unless
workers keep dying, then it stops everything and exits non-zero so the process manager
notices).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from prometheus_client import multiprocess

from urr_common.logs import configure_logging, get_logger
from urr_common.metrics import MULTIPROCESS_DIR_ENV
from urr_common.service import run
from urr_common.settings import load_settings
from urr_common.tasks import cancel_leftovers
from urr_gateway.server import build_apps, serve_gateway
from urr_gateway.settings import GatewaySettings

_LOG = get_logger(__name__)
#: More unexpected worker deaths than this within ``_CRASH_WINDOW_S`` stop the gateway.
_MAX_CRASHES = 5
_CRASH_WINDOW_S = 60.0
#: How long the tasks left at exit get to end once cancelled.
_LEFTOVER_S = 1.0


def serve_in_process(settings: GatewaySettings, *, reuse_port: bool = False) -> None:
    """One worker: build the apps inside the loop and serve until a signal.

    A SIGTERM/SIGINT that comes while the worker is still starting (before the loop's own
    handlers are in place) is remembered, not fatal: the worker stops as soon as it serves.
    """
    early: list[int] = []
    stop_holder: list[asyncio.Event] = []

    def on_early_signal(signum: int, _: FrameType | None) -> None:
        early.append(signum)
        for stop in stop_holder:
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_early_signal)

    async def main() -> None:
        stop = asyncio.Event()
        stop_holder.append(stop)
        if early:
            stop.set()
        try:
            await serve_gateway(build_apps(settings), settings, reuse_port=reuse_port, stop=stop)
        finally:
            # asyncio.run cancels what is left too, but then waits for it without bound.
            stuck = await cancel_leftovers(_LEFTOVER_S, _LOG)
        if stuck:
            # A task that swallows its cancellation (see the log line above): exit without
            # waiting for it, the shutdown itself is done.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    run(main, use_uvloop=settings.http.use_uvloop)


def _worker_entry(index: int) -> None:
    # A spawned child reads the same environment as its parent.
    settings = load_settings(GatewaySettings)
    configure_logging(settings.log, service=settings.service_name)
    _LOG.info("worker_started", worker=index, pid=os.getpid())
    serve_in_process(settings, reuse_port=True)


def supervise(settings: GatewaySettings) -> int:
    """Start ``settings.workers`` workers and keep them running until told to stop."""
    if settings.http.port == 0:
        raise ValueError("several workers need a fixed port (URR_HTTP__PORT), not 0")
    # One Prometheus view of all workers: each writes its samples under this directory and
    # every worker's /metrics sums them (set before the workers are spawned: they inherit it).
    own_dir = None
    if not os.environ.get(MULTIPROCESS_DIR_ENV):
        own_dir = tempfile.mkdtemp(prefix="urr-gateway-metrics-")
        os.environ[MULTIPROCESS_DIR_ENV] = own_dir
    supervisor = _Supervisor(settings)
    previous = {
        sig: signal.signal(sig, supervisor.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return supervisor.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if own_dir is not None:
            del os.environ[MULTIPROCESS_DIR_ENV]
            shutil.rmtree(own_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, settings: GatewaySettings) -> None:
        self._settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, BaseProcess] = {}
        self._crashes: list[float] = []
        self._stopping = False
        self._exit_code = 0

    def on_signal(self, signum: int, _: FrameType | None) -> None:
        self._stopping = True
        for process in self._workers.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        for index in range(self._settings.workers):
            self._start(index)
        while not self._stopping:
            sentinels = [process.sentinel for process in self._workers.values()]
            multiprocessing.connection.wait(sentinels, timeout=0.5)
            self._replace_dead()
        self._join_all()
        return self._exit_code

    def _start(self, index: int) -> None:
        process = self._context.Process(
            target=_worker_entry, args=(index,), name=f"gateway-{index}"
        )
        process.start()
        self._workers[index] = process

    def _replace_dead(self) -> None:
        for index, process in list(self._workers.items()):
            if self._stopping or process.is_alive():
                continue
            now = time.monotonic()
            self._crashes = [at for at in self._crashes if now - at < _CRASH_WINDOW_S] + [now]
            _LOG.error("worker_died", worker=index, exitcode=process.exitcode)
            if process.pid is not None and os.environ.get(MULTIPROCESS_DIR_ENV):
                # Its counters stay in the sum; its live gauges (in flight) leave it.
                multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
            if len(self._crashes) > _MAX_CRASHES:
                _LOG.error("workers_keep_dying", crashes=len(self._crashes))
                self._exit_code = 1
                self.on_signal(signal.SIGTERM, None)
                return
            self._start(index)

    def _join_all(self) -> None:
        http = self._settings.http
        deadline = time.monotonic() + http.drain_delay_s + http.shutdown_timeout_s + 5.0
        for process in self._workers.values():
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                _LOG.error("worker_killed", pid=process.pid)
                process.kill()
                process.join()
                self._exit_code = 1
            elif process.exitcode not in (0, None, -signal.SIGTERM):
                # -SIGTERM: our SIGTERM reached a worker still importing, before it could
                # handle it (nothing to drain yet): it stopped as asked.
                self._exit_code = 1
