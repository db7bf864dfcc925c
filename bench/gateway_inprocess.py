"""Instructions per request through the whole gateway, counted in one process.

``gateway_ab.py --callgrind`` counts a gateway under wrk; on a loaded machine valgrind's
gateway answers a few dozen requests in a run and the idle rate subtracted from them
dominates (at load 13-18 it printed negative figures). Here the real protocol server,
pipeline, filters, proxy and upstream client serve ``N`` requests on 64 in-memory client
connections, their upstream answers (the static nginx answer) fed by in-memory upstream
transports; the only sockets are Redis (the limiter's real pipeline and Lua script) and the
JWKS fetch at start. So the count covers exactly ``N`` + 63 answers and nothing else.

Usage (``--callgrind`` needs valgrind; ``PYTHONPATH`` may name another revision's
``services/gateway/src``, e.g. from ``git archive``)::

    N=1500 WARM=400 valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file=/tmp/gw.%p python bench/gateway_inprocess.py --callgrind
    N=20000 python bench/gateway_inprocess.py            # user/sys CPU us per request
    NOFILTERS=1 ...                                      # the filter steps left out
    MISS=1 ...                      # every head differs from its connection's previous one
                                    # (two heads alternate both ways: no head is reused)
    USERS=4 ...                     # requests of 4 users in turn, as gateway_proxy.py's wrk
                                    # script sends them (one turn shared by the connections)
    GC_GEN0=700 ...                 # the interpreter's gen0 threshold (default: the shipped
                                    # worker's URR_HTTP__GC_GEN0_THRESHOLD, 20000)

The limiter's budget is raised to 5 s (valgrind is ~50x slower; a decision that fell open
would be a cheaper request) and the identity assertion reused for 5 s (its ECDSA signature,
once a second as shipped, would otherwise weigh on a few hundred counted requests).
"""

# ruff: noqa: ASYNC221, E402, S603, S607 - a benchmark: callgrind_control blocks on purpose
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_proxy import (
    PATH,
    SHIPPED_GC_GEN0,
    gateway_env,
    start_upstream,
    stop_all,
    write_keys_and_sign,
)

from urr_devstack.procs import RedisServer, free_port, wait_listening

N_WARM = int(os.environ.get("WARM", "3000"))
N = int(os.environ.get("N", "20000"))
CONNS = 64
NOFILTERS = bool(os.environ.get("NOFILTERS"))
#: Heads that alternate on every connection, so no connection sees its previous head again.
MISS = bool(os.environ.get("MISS"))
USERS = int(os.environ.get("USERS", "1"))
#: The worker's shipped ``URR_HTTP__GC_GEN0_THRESHOLD`` by default (the fair comparison: what
#: a deployed worker collects); 700 is the interpreter's default.
GC_GEN0 = int(os.environ.get("GC_GEN0", str(SHIPPED_GC_GEN0)))
CALLGRIND = "--callgrind" in sys.argv or bool(os.environ.get("CALLGRIND"))
if any(arg not in ("--callgrind",) for arg in sys.argv[1:]):
    # Options are environment variables (above); anything else, --help included, gets the
    # usage instead of a 20,000-request run.
    print(__doc__)
    sys.exit(0 if sys.argv[1:] in (["--help"], ["-h"]) else 2)

work = Path(tempfile.mkdtemp())
procs = []
redis = RedisServer(port=free_port(), workdir=work / "redis")
signed = write_keys_and_sign(work, USERS)
at, et = signed[0]
up = free_port()
procs.append(start_upstream(work, up))
wait_listening("127.0.0.1", up, 10, "u")
redis.start()
os.environ.update(gateway_env(redis.url, f"http://127.0.0.1:{up}"))
os.environ["URR_LOG__LEVEL"] = "WARNING"
os.environ["URR_IDENTITY__REUSE_S"] = "5"
os.environ["URR_RATE_LIMIT__BUDGET_MS"] = "5000"
os.environ["URR_RATE_LIMIT__POLICY_POLL_S"] = "1.0"

from aiohttp import web

from urr_common.logs import configure_logging
from urr_common.settings import load_settings
from urr_gateway.publicserver import PublicServer
from urr_gateway.server import build_apps
from urr_gateway.settings import GatewaySettings
from urr_gateway.upstream import pool as poolmod
from urr_gateway.upstream.connection import UpstreamConnection

UP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n"
    b'{"ok":true}'
)
USER_REQUESTS = [
    (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nCookie: access_token={access}\r\n"
        f"x-queue-entry-token: {entry}\r\n\r\n"
    ).encode()
    for access, entry in signed
]
REQUEST = USER_REQUESTS[0]
#: With ``MISS``: each connection alternates between these (one header field's value apart).
UP_ANSWERS = (UP_ANSWER, UP_ANSWER.replace(b"01:00:00 GMT", b"01:00:01 GMT")) if MISS else None
REQUESTS = (REQUEST, REQUEST.replace(b"Host: 127.0.0.1:8080", b"Host: 127.0.0.1:8081"))


class UpstreamTransport:
    """An upstream that answers every request head with the static nginx answer."""

    def __init__(self, proto, loop):
        self.p, self.loop = proto, loop
        self.n = 0

    def write(self, data):
        if UP_ANSWERS is None:
            self.loop.call_soon(self.p.data_received, UP_ANSWER)
        else:
            self.n += 1
            self.loop.call_soon(self.p.data_received, UP_ANSWERS[self.n & 1])

    def is_closing(self):
        return False

    def close(self):
        pass

    def abort(self):
        pass

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def get_extra_info(self, name, default=None):
        return default


async def fake_connect(self, loop):
    c = UpstreamConnection(self, loop)
    c.connection_made(UpstreamTransport(c, loop))
    return c


poolmod.ConnectionPool._connect = fake_connect


class State:
    turn = 0
    answered = 0
    target = 0
    done = None
    first = None


class ClientTransport(UpstreamTransport):
    """A client that sends its next request when its answer is written, until ``N``."""

    def write(self, data):
        State.first = data
        State.answered += 1
        if State.answered < State.target:
            if MISS:
                self.n += 1
                self.loop.call_soon(self.p.data_received, REQUESTS[self.n & 1])
            elif USERS > 1:
                State.turn += 1
                self.loop.call_soon(self.p.data_received, USER_REQUESTS[State.turn % USERS])
            else:
                self.loop.call_soon(self.p.data_received, REQUEST)
        elif State.answered >= State.target + CONNS - 1 and not State.done.done():
            State.done.set_result(None)

    def can_write_eof(self):
        return True

    def write_eof(self):
        pass

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default


async def main():
    settings = load_settings(GatewaySettings)
    configure_logging(settings.log, service="gateway")
    apps = build_apps(settings)
    if NOFILTERS:
        pass
    runner = web.AppRunner(apps.public, handle_signals=False, access_log=None)
    await runner.setup()
    server = PublicServer(apps.public)
    if NOFILTERS:
        server._steps = ()
    loop = asyncio.get_running_loop()
    conns = [server.connection() for _ in range(CONNS)]
    for c in conns:
        c.connection_made(ClientTransport(c, loop))

    async def run(n):
        State.answered = 0
        State.target = n
        State.done = loop.create_future()
        for c in conns:
            loop.call_soon(c.data_received, REQUEST)
        await State.done

    await asyncio.sleep(float(os.environ.get("SETTLE", "3")))
    await run(N_WARM)
    assert State.first.startswith(b"HTTP/1.1 200"), State.first[:400]
    import gc

    # As the shipped worker does after start-up (``server.tune_gc``): collect, freeze, and
    # the gen0 threshold of ``URR_HTTP__GC_GEN0_THRESHOLD`` (GC_GEN0=700: the interpreter's).
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0, gen1, gen2)
    if CALLGRIND:
        subprocess.run(
            ["callgrind_control", "-z", str(os.getpid())], check=True, capture_output=True
        )
        subprocess.run(
            ["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True
        )
    prof = None
    if os.environ.get("PROFILE"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = os.times()
    w0 = time.perf_counter()
    await run(N)
    t1 = os.times()
    w1 = time.perf_counter()
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["PROFILE"])
    if CALLGRIND:
        subprocess.run(
            ["callgrind_control", "--instr=off", str(os.getpid())], check=True, capture_output=True
        )
        subprocess.run(
            ["callgrind_control", "-d", str(os.getpid())], check=True, capture_output=True
        )
    n = State.answered
    if CALLGRIND:
        print("instructions: callgrind_annotate the dump; divide its total by the answers")
    print(
        f"{'nofilters' if NOFILTERS else 'full'}: {n} answers, "
        f"user {1e6 * (t1.user - t0.user) / n:.1f} sys {1e6 * (t1.system - t0.system) / n:.1f} "
        f"wall {1e6 * (w1 - w0) / n:.1f} us/req",
        flush=True,
    )
    if os.environ.get("SHOW"):
        print(State.first.decode())
    await runner.cleanup()


import uvloop

try:
    uvloop.run(main())
finally:
    stop_all(procs)
    redis.stop()
