"""CPU of the load generator itself per request: Locust playing the flash crowd (issue 22).

    uv run --frozen python bench/locust_client_cpu.py \
        [--arrivals 1500] [--rate 50] [--rounds 1] [--before main] [--users N] \
        [--pyspy DIR [--native]] [--only before|tree]

The crowd's Locust (``loadtests/src/urr_loadtests/scenarios/flash_crowd.py`` and its
``Flow``, started by that revision's own ``urr_loadtests.__main__.run_locust`` with its
pacing and CSV/HTML reports; a pool of 40 % as many users as arrivals unless ``--users``
says, as the real crowd's 1,500 users take 5,000 arrivals in turn) runs against a **stub**:
one asyncio server in this process that answers the crowd's routes with canned answers like the
stack's (edge page 302, waiting page, assign with 429 + ``Retry-After`` on half the first
three tries as the edge's throttle does, checks until admitted with a ``Set-Cookie``, the admitted
page, Tier-2 enter and status, a 100-seat map that is sold out for 49 arrivals in 50, hold,
reserve, the outcome, leave; about 13 requests per arrival, the real crowd sends ~14). A stub
is enough here, and better than the stack: it is the generator's own CPU that is measured,
and the stub costs next to nothing and answers at once, so nothing else competes for the
cores. Latencies against the stub say nothing about the stack.

``--before REV`` runs the same crowd with that revision's ``urr_loadtests`` (``git archive``
of ``loadtests/src``, first on ``PYTHONPATH``, so the Locust process imports it) alternately
with the working tree's, in one run: compare within a run only, the machine is shared.

Printed per run: the Locust process's CPU (user + system, from /proc, sampled every 0.5 s)
per request the stub answered, over the window from the first request to the last (Locust's
start-up and its end-of-run reports are outside it, its users' spawning inside, as in the
real crowd), as a total and as the median / P90 / max over 2-second windows; requests per
arrival, arrivals finished and their outcomes (the same crowd for both revisions), and the
load average at the start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tier1_crowd_cpu import cpu_s, export_revision, loadavg, pct

from urr_devstack.procs import free_port

REPO = Path(__file__).resolve().parents[1]
EVENT = "benchcrowd"
#: Share of an arrival's first assign tries the stub refuses with 429 (the real crowd: 12,900
#: for 5,000 assigns; fewer here, so the run's tail of backed-off arrivals stays short).
THROTTLED = 0.5
THROTTLED_TRIES = 3
#: Checks until a place is admitted, Tier-2 statuses until admitted (at most).
CHECKS = 3
#: One arrival in this many finds a free seat (capacity 100 for 5,000 arrivals).
FREE_SEAT_EVERY = 50
#: Locust users per arrival unless ``--users`` says: the real crowd has 1,500 users for 5,000
#: arrivals (each user takes ~3 arrivals in turn, then parks); the bench's crowd is shorter.
USERS_SHARE = 0.4

_COMMON = (
    "Server: stub\r\nX-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n"
    "Referrer-Policy: strict-origin-when-cross-origin\r\nCache-Control: no-store\r\n"
)
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 302: "Found", 404: "Not Found"}
_WAITING_PAGE = (
    b"<!doctype html><html><head><title>Waiting room</title></head><body>"
    + b"<p>" * 40
    + b"x" * 3000
    + b"</body></html>"
)
_EVENT_PAGE = b"<!doctype html><html><body>" + b"e" * 1500 + b"</body></html>"


def _answer(
    status: int, body: bytes, content_type: str = "application/json", extra: str = ""
) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Too Many Requests')}\r\n"
        f"Date: {date}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-Id: {uuid.uuid4().hex}\r\n{_COMMON}{extra}\r\n"
    )
    return head.encode("latin-1") + body


def _json(status: int, value: Any, extra: str = "") -> bytes:
    return _answer(status, json.dumps(value).encode(), extra=extra)


def _seat_map(free: bool) -> bytes:
    seats = [
        {
            "seatId": f"A-{n}",
            "row": "A",
            "number": n,
            "priceCents": 5000,
            "state": "free" if free and n == 1 else "sold",
            "heldByYou": False,
        }
        for n in range(1, 101)
    ]
    return _json(200, {"eventId": EVENT, "seats": seats})


@dataclass
class StubState:
    """What the stub has answered in the current run."""

    requests: int = 0
    checks: dict[str, int] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)
    positions: int = 0
    seat_maps: int = 0
    routes: dict[str, int] = field(default_factory=dict)

    def answer(self, method: str, target: str, cookie: str, body: bytes) -> bytes:
        self.requests += 1
        parts = target.split("?", 1)[0].strip("/").split("/")
        route = f"{method} {'/'.join(parts[:4])}"
        self.routes[route] = self.routes.get(route, 0) + 1
        return self._route(method, parts, cookie, body)

    def _route(  # noqa: C901 - one branch per route of the crowd
        self, method: str, parts: list[str], cookie: str, body: bytes
    ) -> bytes:
        if parts[0] == "events" and len(parts) == 2:
            if "urr-vwr-token=" in cookie:
                return _answer(200, _EVENT_PAGE, "text/html; charset=utf-8")
            return _answer(302, b"", "text/plain", f"Location: /vwr/{parts[1]}\r\n")
        if parts[0] == "vwr":
            return _answer(200, _WAITING_PAGE, "text/html; charset=utf-8")
        if parts[:3] == ["vwr-api", "vwr", "assign"]:
            request_id = json.loads(body)["requestId"]
            tries = self.tries[request_id] = self.tries.get(request_id, 0) + 1
            if tries <= THROTTLED_TRIES and random.random() < THROTTLED:
                return _json(429, {"code": "rate_limited"}, "Retry-After: 1\r\n")
            self.positions += 1
            return _json(
                200,
                {"requestId": request_id, "position": self.positions, "pollAfterSeconds": 1},
            )
        if parts[:3] == ["vwr-api", "vwr", "check"]:
            seen = self.checks[parts[4]] = self.checks.get(parts[4], 0) + 1
            if seen < CHECKS:
                return _json(200, {"admitted": False, "position": 1, "pollAfterSeconds": 1})
            token = "v." + uuid.uuid4().hex * 6
            cookie_line = f"Set-Cookie: urr-vwr-token={token}; Path=/; HttpOnly; SameSite=Lax\r\n"
            return _json(200, {"admitted": True, "token": token}, cookie_line)
        if parts[:3] == ["api", "v1", "queue"]:
            if parts[4] == "leave":
                return _json(200, {"left": True})
            waiting = {"status": "waiting", "position": 3, "poll_after_seconds": 1}
            if parts[4] == "enter":
                return _json(201, waiting)
            if random.random() < 0.3:
                return _json(200, waiting)
            return _json(200, {"status": "admitted", "entry_token": "e." + uuid.uuid4().hex * 6})
        if parts[:3] == ["api", "v1", "seats"]:
            if method == "GET":
                self.seat_maps += 1
                return _seat_map(self.seat_maps % FREE_SEAT_EVERY == 0)
            return _json(200, {"holdId": uuid.uuid4().hex, "seatId": parts[4]})
        if parts[:3] == ["api", "v1", "reservations"]:
            return _json(202, {"reservationId": str(uuid.uuid4()), "status": "pending"})
        if parts[:3] == ["api", "v1", "events"]:
            return _json(200, {"reservationId": parts[5], "status": "confirmed"})
        return _json(404, {"code": "not_found"})


class StubProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, just enough for Locust's client."""

    def __init__(self, state: StubState) -> None:
        self.state = state
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length, cookie = 0, ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "cookie":
                    cookie = value.strip()
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            self.transport.write(self.state.answer(method, target, cookie, body))


class Stub:
    """The stub server on its own thread and event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.state = StubState()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _serve(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            self.loop.create_server(
                lambda: StubProtocol(self.state), "127.0.0.1", self.port, backlog=4096
            )
        )
        ready.set()
        self.loop.run_forever()
        server.close()

    def reset(self) -> StubState:
        self.state.__init__()  # type: ignore[misc]
        return self.state


#: The wrapper: that revision's own run_locust, with the crowd's pool of users (at most
#: ``--users``).
RUNNER = """
import sys
from pathlib import Path
from urr_loadtests.__main__ import crowd_pool, run_locust
host, out = sys.argv[1], Path(sys.argv[2])
arrivals, rate, seconds, pool = map(float, sys.argv[3:7])
env = dict(arg.split("=", 1) for arg in sys.argv[7:])
users = min(crowd_pool(int(arrivals), rate), int(pool))
sys.exit(run_locust("flash_crowd", host, out, users, rate, int(seconds), env))
"""


def _locust_pid(parent: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
                return int(entry.name)
    return None


def run_once(
    label: str, src: Path, stub: Stub, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    state = stub.reset()
    out = work / f"{label}-{time.monotonic_ns()}"
    out.mkdir(parents=True)
    tokens = out / "tokens.txt"
    tokens.write_text(
        "".join(f"bench-user-{n} a.{uuid.uuid4().hex * 5}\n" for n in range(args.arrivals))
    )
    seconds = int(args.arrivals / args.rate) + 120
    env = {
        "URR_LT_EVENT": EVENT,
        "URR_LT_TOKENS": str(tokens),
        "URR_LT_SPAWN_RATE": str(args.rate),
        "URR_LT_RESULTS": str(out / "arrivals.jsonl"),
        "URR_LT_ARRIVAL_DEADLINE_S": str(seconds - 15),
    }
    proc_env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    load0 = loadavg()
    wrapper = subprocess.Popen(  # noqa: S603 - this interpreter, our own argv
        [
            sys.executable,
            "-c",
            RUNNER,
            f"http://127.0.0.1:{stub.port}",
            str(out),
            str(args.arrivals),
            str(args.rate),
            str(seconds),
            str(args.users or math.ceil(args.arrivals * USERS_SHARE)),
            *(f"{k}={v}" for k, v in env.items()),
        ],
        env=proc_env,
    )
    pid = None
    while pid is None and wrapper.poll() is None:
        time.sleep(0.05)
        pid = _locust_pid(wrapper.pid)
    spy = None
    if args.pyspy and pid is not None and label != "before":
        spy = subprocess.Popen(  # noqa: S603 - py-spy with our own argv
            [
                str(Path(sys.executable).with_name("py-spy")),
                *("record", "--pid", str(pid), "--rate", "100", "--format", "raw"),
                *(["--native"] if args.native else []),
                *("-o", str(Path(args.pyspy) / f"locust-{label}.txt")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    samples: list[tuple[float, float, int]] = []
    while wrapper.poll() is None and pid is not None:
        used = cpu_s(pid, children=False)  # 0 once Locust has exited: not a sample
        if samples and used < samples[-1][1]:
            break
        samples.append((time.monotonic(), used, state.requests))
        time.sleep(0.5)
    if spy is not None:
        spy.wait(timeout=60)
    started = next((i for i, s in enumerate(samples) if s[2] > 0), None)
    ended = max((i for i in range(1, len(samples)) if samples[i][2] > samples[i - 1][2]), default=0)
    if started is None or ended <= started:
        return {"label": label, "error": f"no requests (locust exit {wrapper.returncode})"}
    window = samples[started : ended + 1]
    per_window: list[float] = []
    for a, b in zip(window[::4], window[4::4], strict=False):
        if b[2] - a[2] >= 20:
            per_window.append((b[1] - a[1]) / (b[2] - a[2]) * 1e6)
    cpu = window[-1][1] - window[0][1]
    requests = window[-1][2] - window[0][2]
    arrivals = [json.loads(line) for line in (out / "arrivals.jsonl").read_text().splitlines()]
    outcomes: dict[str, int] = {}
    for arrival in arrivals:
        outcomes[arrival["outcome"]] = outcomes.get(arrival["outcome"], 0) + 1
    return {
        "label": label,
        "cpu_us_per_request": cpu / requests * 1e6,
        "window_median": statistics.median(per_window) if per_window else float("nan"),
        "window_p90": pct(per_window, 0.9),
        "window_max": max(per_window, default=float("nan")),
        "cpu_s": cpu,
        "requests": requests,
        "per_arrival": state.requests / max(1, len(arrivals)),
        "arrivals": len(arrivals),
        "outcomes": outcomes,
        "wall_s": window[-1][0] - window[0][0],
        "load": f"{load0} -> {loadavg()}",
        "exit": wrapper.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arrivals", type=int, default=1500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--users", type=int, help=f"Locust users (default {USERS_SHARE:.0%} of the arrivals)"
    )
    parser.add_argument("--before", help="a git revision to compare with (e.g. main)")
    parser.add_argument("--pyspy", help="record the tree's Locust with py-spy into this folder")
    parser.add_argument("--native", action="store_true", help="py-spy with native frames")
    parser.add_argument("--only", choices=("before", "tree"), help="run one side only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="urr-locust-bench-"))
    sides: list[tuple[str, Path]] = []
    if args.before and args.only != "tree":
        sides.append(("before", export_revision(args.before, work / "before", "loadtests/src")))
    if args.only != "before":
        sides.append(("tree", REPO / "loadtests" / "src"))
    stub = Stub()
    results: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for label, src in sides if round_ % 2 == 0 else sides[::-1]:
            result = run_once(label, src, stub, args, work)
            results.append(result)
            print(json.dumps(result), flush=True)
    print()
    print(
        f"{'run':8} {'us/req':>8} {'2s-med':>8} {'2s-p90':>8} {'2s-max':>8} "
        f"{'cpu s':>7} {'requests':>9} {'req/arr':>7} {'arrivals':>8}  outcomes"
    )
    for r in results:
        if "error" in r:
            print(f"{r['label']:8} {r['error']}")
            continue
        print(
            f"{r['label']:8} {r['cpu_us_per_request']:8.0f} {r['window_median']:8.0f} "
            f"{r['window_p90']:8.0f} {r['window_max']:8.0f} {r['cpu_s']:7.2f} "
            f"{r['requests']:9d} {r['per_arrival']:7.2f} {r['arrivals']:8d}  "
            f"{json.dumps(r['outcomes'], sort_keys=True)}"
        )


if __name__ == "__main__":
    main()
