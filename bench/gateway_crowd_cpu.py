"""The gateway's CPU per request in the flash crowd's mix, by route (issue 22, item 3).

In ``make loadtest`` the gateway spent 15.5 CPU s on ~27,000 requests (~550 µs each) while
``gateway_proxy.py``'s one cached route costs ~100 µs. The crowd differs: every visitor is
new (its access token, its Tier-2 entry token and its rate-limit keys are first seen, its
identity assertion signed afresh), the routes go to two upstreams (queue, ticket), and the
answers differ in size (the seat map). This bench sends that mix through ``python -m
urr_gateway`` (one worker, uvloop, every filter, the local stack's settings: default
rate-limit categories, ``INFO`` logs, the identity assertion signed with a key of its own)
and prints the gateway process's CPU µs per request by route.

Each visitor does what ``urr_loadtests.scenarios.flow`` does once Tier 1 let it through, in
the same order, every request carrying what the edge forwards (the browser's cookies
``access_token``, ``urr-vwr-token`` and, once admitted, ``urr-entry-token``;
``Sec-Fetch-Site``; the ``X-Forwarded-*`` fields): the event page, ``enter``, ``status``
(1.3 a visitor), the seat map, a hold, a reservation, a reservation read, ``leave``. The
routes run as phases, all visitors one route after the other at ``--rate`` requests a
second (open loop), so each phase's CPU is one route's; the visitor's first request of a
token is where the crowd meets it too (the access token on the event page, the entry token
on the seat map). The total weighs each route by the crowd's own counts
(``CROWD_COUNTS``: the 20:02 run of ``make loadtest``), holds and reservations included
for every visitor here only so their figures rest on enough requests.

The upstreams are one nginx answering each route with a fixed body of the real service's
size (the seat map of the crowd's 100-seat event, ~8 KB): the gateway's own CPU is measured,
not the queue's or the ticket service's. Requests come over ``--connections`` kept-alive
connections, as the edge stand-in's pool sends them. Redis is a private ``redis-server``.

``--before REV`` runs the gateway of that revision (``git archive`` of its
``services/gateway/src`` and ``libs/common/src``, first on ``PYTHONPATH``) beside this
tree's: every round starts both afresh (fresh visitors for each), then sends each route to
one and then the other, the order swapped every route and every round, so both meet the
shared machine as it is at that moment. CPU is read from ``/proc/PID/task/*/schedstat``
(nanoseconds; ``/proc/PID/stat``'s 10 ms ticks are too coarse for a phase). Usage::

    uv run --frozen python bench/gateway_crowd_cpu.py [--before main] [--visitors 600]
        [--rate 300] [--rounds 2] [--connections 16] [--pyspy DIR]

``--pyspy DIR`` records this tree's gateway in its last round (py-spy, raw) and prints the
summary of ``gateway_proxy.summarise_profile``. The machine is shared: compare the columns of
one run, never runs of different times.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway_proxy import start_nginx, summarise_profile, wait_http

from urr_common.tokens import KeySet, SigningKey, TokenSigner
from urr_devstack.procs import RedisServer, free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent
EVENT = "crowd-event"
SEATS = [f"{row}{number}" for row in "ABCDEFGHIJ" for number in range(1, 11)]

#: Requests of each route in the crowd's 100 s of arrivals (BRIEF, 20:02 run): the weights
#: of the total. The event page is the admitted visitor's second look (one each).
CROWD_COUNTS = {
    "event page": 5000,
    "queue enter": 5000,
    "queue status": 6505,
    "seat map": 4996,
    "seat hold": 144,
    "reservation": 100,
    "reservation read": 373,
    "queue leave": 4895,
}
ROUTES = tuple(CROWD_COUNTS)


@dataclass
class Visitor:
    user_id: str
    access_token: str
    entry_token: str
    vwr_token: str

    def cookie(self, admitted: bool) -> str:
        cookie = f"access_token={self.access_token}; urr-vwr-token={self.vwr_token}"
        if admitted:
            cookie += f"; urr-entry-token={self.entry_token}"
        return cookie


def request_bytes(route: str, visitor: Visitor, index: int) -> bytes:
    """The request the edge forwards for this visitor's step (fields as Locust's
    ``FastHttpSession`` sends them, plus the edge's ``X-Forwarded-*``)."""
    body = b""
    admitted = route not in ("event page", "queue enter", "queue status")
    method = "GET"
    base = f"/api/v1/queue/{EVENT}"
    if route == "event page":
        path = f"/events/{EVENT}"
    elif route == "queue enter":
        method, path = "POST", f"{base}/enter"
    elif route == "queue status":
        path = f"{base}/status"
    elif route == "seat map":
        path = f"/api/v1/seats/{EVENT}"
    elif route == "seat hold":
        method, path = "POST", f"/api/v1/seats/{EVENT}/{SEATS[index % len(SEATS)]}/hold"
    elif route == "reservation":
        method, path = "POST", f"/api/v1/reservations/{EVENT}"
        body = json.dumps({"seatIds": [SEATS[index % len(SEATS)]]}).encode()
    elif route == "reservation read":
        path = f"/api/v1/events/{EVENT}/reservations/res-{visitor.user_id}"
    else:
        method, path = "POST", f"{base}/leave"
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1:8000",
        "User-Agent: python/gevent-http-client-1.5.3",
        "Accept-Encoding: gzip, deflate",
        f"cookie: {visitor.cookie(admitted)}",
        "Sec-Fetch-Site: same-origin",
    ]
    if body:
        lines.append("content-type: application/json")
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [
        "X-Forwarded-For: 127.0.0.1",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: 127.0.0.1:8000",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def phase_requests(route: str, visitors: list[Visitor]) -> list[bytes]:
    if route == "queue status":
        # 1.3 polls a visitor, as in the crowd: everyone once, every third visitor again.
        again = visitors[::3]
        return [request_bytes(route, v, i) for i, v in enumerate([*visitors, *again])]
    return [request_bytes(route, v, i) for i, v in enumerate(visitors)]


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of ``pids`` and all their threads so far, from the scheduler's nanosecond
    count (``/proc/PID/task/*/schedstat``): ``/proc/PID/stat`` counts 10 ms ticks, too coarse
    for a phase of a few hundred requests."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, ValueError):
                continue  # a thread that just ended
    return total / 1e9


# --- the load generator (a child process: its CPU is not the gateway's) ---------------------


async def _read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def _drive(port: int, gateway_pid: int, plan_file: str, rate: float, pool: int) -> None:
    plan: dict[str, list[str]] = json.loads(Path(plan_file).read_text())  # noqa: ASYNC240
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(pool):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    results: dict[str, dict[str, object]] = {}

    async def one(request: bytes, statuses: dict[int, int]) -> None:
        reader, writer = await idle.get()
        writer.write(request)
        try:
            status = await _read_answer(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            status = 0  # closed by the gateway: counted, and a new connection in its place
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        statuses[status] = statuses.get(status, 0) + 1
        idle.put_nowait((reader, writer))

    for route, encoded in plan.items():
        requests = [base64.b64decode(item) for item in encoded]
        statuses: dict[int, int] = {}
        await asyncio.sleep(0.3)
        cpu0, wall0 = cpu_seconds([gateway_pid]), time.monotonic()
        tasks = []
        for number, request in enumerate(requests):
            delay = wall0 + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(request, statuses)))
        await asyncio.gather(*tasks)
        cpu = cpu_seconds([gateway_pid]) - cpu0
        results[route] = {
            "n": len(requests),
            "cpu_s": cpu,
            "wall_s": time.monotonic() - wall0,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
        }
    print(json.dumps(results), flush=True)


# --- the parent ------------------------------------------------------------------------------


def upstream_conf(work: Path, port: int) -> str:
    """nginx answering each route with a body the size of the real service's answer."""
    seat_map = {
        "eventId": EVENT,
        "seats": [
            {"seatId": seat, "row": seat[0], "number": int(seat[1:]), "state": "free"}
            for seat in SEATS
        ],
    }
    (work / "static").mkdir(exist_ok=True)
    (work / "static" / "seatmap.json").write_text(json.dumps(seat_map))
    (work / "static" / "page.html").write_text("<!doctype html>" + "x" * 1800)
    token_like = "e" * 420
    answers = {
        r"^/api/v1/queue/[^/]+/enter$": {
            "status": "waiting",
            "position": 1234,
            "poll_after_seconds": 2,
            "event_id": EVENT,
        },
        r"^/api/v1/queue/[^/]+/status$": {
            "status": "admitted",
            "entry_token": token_like,
            "expires_at": "2026-12-07T20:30:00Z",
            "event_id": EVENT,
        },
        r"^/api/v1/queue/[^/]+/leave$": {"status": "left", "event_id": EVENT},
        r"^/api/v1/seats/[^/]+/[^/]+/hold$": {
            "holdId": "h" * 32,
            "seatId": "A1",
            "expiresAt": "2026-12-07T20:30:00Z",
        },
        r"^/api/v1/reservations/": {"reservationId": "r" * 32, "status": "pending"},
        r"^/api/v1/events/[^/]+/reservations/": {"reservationId": "r" * 32, "status": "pending"},
    }
    locations = "\n".join(
        f"location ~ {pattern} {{ default_type application/json; "
        f"return 200 '{json.dumps(body)}'; }}"
        for pattern, body in answers.items()
    )
    return f"""server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /access.json {{ alias {work}/access.json; }}
        location = /entry.json {{ alias {work}/entry.json; }}
        location ~ ^/api/v1/seats/[^/]+$ {{
            default_type application/json; root {work}/static; try_files /seatmap.json =404;
        }}
        location ~ ^/events/[^/]+$ {{
            default_type text/html; root {work}/static; try_files /page.html =404;
        }}
        {locations}
    }}"""


@dataclass
class Signers:
    access: TokenSigner
    entry: TokenSigner

    def visitors(self, label: str, count: int) -> list[Visitor]:
        made = []
        slug = "".join(c if c.isalnum() else "-" for c in label)
        for number in range(count):
            user = f"{slug}-{number}-{secrets.token_hex(4)}"
            made.append(
                Visitor(
                    user_id=user,
                    access_token=self.access.sign(
                        user, {"email": f"{user}@example.com", "role": "user"}
                    ),
                    entry_token=self.entry.sign(user, {"evt": EVENT}),
                    vwr_token=base64.urlsafe_b64encode(os.urandom(300)).decode().rstrip("="),
                )
            )
        return made


_CPROFILE = (
    "import cProfile, runpy, time\n"
    "profile = cProfile.Profile(time.process_time)\n"
    "profile.enable()\n"
    "try:\n"
    "    runpy.run_module('urr_gateway', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    profile.disable()\n"
    "    profile.dump_stats({out!r})\n"
)


@dataclass
class Run:
    label: str
    results: dict[str, dict[str, object]] = field(default_factory=dict)
    idle_ms_per_s: float = 0.0
    load: str = ""


class Gateway:
    """One ``python -m urr_gateway`` of a revision: started, warmed up, then driven a phase
    at a time (the two gateways of a round take each phase in turn, so both see the
    machine as it is at that moment)."""

    def __init__(
        self,
        label: str,
        pythonpath: str | None,
        env: dict[str, str],
        options: argparse.Namespace,
        work: Path,
    ) -> None:
        self.label = label
        self.options = options
        self.work = work
        self.port = free_port()
        run_env = {**env, "URR_HTTP__PORT": str(self.port), "URR_INTERNAL__PORT": str(free_port())}
        run_env["URR_METRICS__PORT"] = str(free_port())
        if pythonpath:
            run_env["PYTHONPATH"] = pythonpath
        self.log = (work / f"gateway-{label}.log").open("ab")
        argv = [sys.executable, "-m", "urr_gateway"]
        if options.cprofile and pythonpath is None:
            # cProfile of this tree's gateway (deterministic, so small calls weigh more than
            # they cost; for the split between Python functions, not for the figures). CPU
            # time, not the wall clock: a write that wakes Redis or the upstream on a busy
            # machine waits for a core, which is no CPU of the gateway's.
            argv[1:] = ["-c", _CPROFILE.format(out=options.cprofile)]
        self.process = subprocess.Popen(  # noqa: S603
            argv, env=run_env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.spy: subprocess.Popen[bytes] | None = None
        self.run = Run(label)

    def warm(self, signers: Signers) -> None:
        wait_listening("127.0.0.1", self.port, 60, self.label, self.process)
        warm = signers.visitors(f"warm-{self.label}", 1)[0]
        wait_http(
            f"http://127.0.0.1:{self.port}/api/v1/seats/{EVENT}",
            30,
            {"Cookie": warm.cookie(True), "Sec-Fetch-Site": "same-origin"},
        )
        # A few visitors through every route (imports, upstream connections, JWKS).
        plan: dict[str, list[str]] = {route: [] for route in ROUTES}
        for index, visitor in enumerate(signers.visitors(f"warmup-{self.label}", 20)):
            for route in ROUTES:
                plan[route].append(base64.b64encode(request_bytes(route, visitor, index)).decode())
        self.drive(plan)
        idle0 = cpu_seconds([self.process.pid])
        time.sleep(self.options.idle)
        idle = cpu_seconds([self.process.pid]) - idle0
        self.run.idle_ms_per_s = 1000 * idle / self.options.idle

    def profile(self, out: Path) -> None:
        spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        argv = [spy_bin, "record", "--pid", str(self.process.pid)]
        argv += ["-r", "200", "--nonblocking", "--format", "raw", "-o", str(out)]
        self.spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        time.sleep(1.0)

    def drive(self, plan: dict[str, list[str]]) -> dict[str, dict[str, object]]:
        return drive(
            self.port,
            self.process.pid,
            plan,
            self.options.rate,
            self.options.connections,
            self.work,
        )

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(2)
            self.spy.wait(30)
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def drive(
    port: int, pid: int, plan: dict[str, list[str]], rate: float, pool: int, work: Path
) -> dict[str, dict[str, object]]:
    plan_file = work / "plan.json"
    plan_file.write_text(json.dumps(plan))
    argv = [sys.executable, __file__, "--drive", str(port), str(pid), str(plan_file)]
    argv += ["--rate", str(rate), "--connections", str(pool)]
    out = subprocess.run(  # noqa: S603
        argv,
        check=False,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed: {out.stderr[-2000:]}")
    value: dict[str, dict[str, object]] = json.loads(out.stdout.strip().splitlines()[-1])
    return value


def per_request_us(run: Run, route: str) -> float:
    result = run.results[route]
    return 1e6 * float(str(result["cpu_s"])) / int(str(result["n"]))


def weighted_us(run: Run) -> float:
    total = sum(CROWD_COUNTS.values())
    return sum(per_request_us(run, route) * CROWD_COUNTS[route] for route in ROUTES) / total


def print_table(runs: dict[str, list[Run]]) -> None:
    labels = list(runs)
    print(f"\ngateway CPU µs per request, median of {len(runs[labels[0]])} rounds [min-max]:")
    header = f"{'route':18}{'crowd n':>8}"
    for label in labels:
        header += f"{label:>26}"
    print(header)
    rows = [*ROUTES, "crowd mix (weighted)"]
    for route in rows:
        line = f"{route:18}{CROWD_COUNTS.get(route, sum(CROWD_COUNTS.values())):>8}"
        for label in labels:
            values = [
                weighted_us(run) if route not in CROWD_COUNTS else per_request_us(run, route)
                for run in runs[label]
            ]
            cell = f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"
            line += f"{cell:>26}"
        print(line)
    for label in labels:
        for run in runs[label]:
            statuses = {route: run.results[route]["statuses"] for route in ROUTES}
            print(
                f"{label}: idle {run.idle_ms_per_s:.1f} ms/s, load {run.load}, "
                f"statuses {json.dumps(statuses)}"
            )


def run_round(
    number: int,
    variants: list[tuple[str, str | None]],
    env: dict[str, str],
    signers: Signers,
    options: argparse.Namespace,
    work: Path,
) -> list[Gateway]:
    """One round: every revision's gateway started, then each route on each in turn."""
    gateways = [Gateway(label, pythonpath, env, options, work) for label, pythonpath in variants]
    try:
        for gateway in gateways:
            gateway.warm(signers)
        if options.pyspy and number == options.rounds - 1:
            Path(options.pyspy).mkdir(parents=True, exist_ok=True)
            gateways[-1].profile(Path(options.pyspy) / "gateway.txt")
        # Fresh visitors for each gateway; each route in turn on both, first one then the
        # other, the order swapped every route and every round.
        visitors = {
            gateway.label: signers.visitors(f"{gateway.label}-{number}", options.visitors)
            for gateway in gateways
        }
        load0 = Path("/proc/loadavg").read_text().split()[0]
        for index, route in enumerate(ROUTES):
            turn = gateways if (index + number) % 2 == 0 else gateways[::-1]
            for gateway in turn:
                requests = phase_requests(route, visitors[gateway.label])
                encoded = [base64.b64encode(r).decode() for r in requests]
                gateway.run.results.update(gateway.drive({route: encoded}))
        load1 = Path("/proc/loadavg").read_text().split()[0]
    finally:
        for gateway in gateways:
            gateway.stop()
    for gateway in gateways:
        gateway.run.load = f"{load0} -> {load1}"
    return gateways


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="main")
    parser.add_argument("--visitors", type=int, default=600)
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s in each phase")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of idle CPU measured")
    parser.add_argument("--pyspy", default="")
    parser.add_argument("--cprofile", default="", help="a file: this tree's gateway's cProfile")
    parser.add_argument("--drive", nargs=3)
    options = parser.parse_args()
    if options.drive:
        port, pid, plan_file = options.drive
        asyncio.run(_drive(int(port), int(pid), plan_file, options.rate, options.connections))
        return
    if shutil.which("nginx") is None:
        sys.exit("nginx is not on PATH")
    work = Path(tempfile.mkdtemp(prefix="urr-bench-gwcrowd-"))
    before_path = None
    if options.before:
        argv = ["git", "-C", str(REPO), "archive", options.before]
        archive = subprocess.run(  # noqa: S603
            [*argv, "services/gateway/src", "libs/common/src"],
            check=True,
            capture_output=True,
        ).stdout
        (work / "before").mkdir()
        untar = ["tar", "-x", "-C", str(work / "before")]
        subprocess.run(untar, input=archive, check=True)  # noqa: S603
        before_path = f"{work}/before/services/gateway/src:{work}/before/libs/common/src"
    access_key = SigningKey.generate("bench-access")
    entry_key = SigningKey.generate("bench-entry")
    (work / "access.json").write_text(json.dumps(KeySet([access_key.verification_key()]).to_jwks()))
    (work / "entry.json").write_text(json.dumps(KeySet([entry_key.verification_key()]).to_jwks()))
    signers = Signers(
        TokenSigner(access_key, "urr-auth", "urr", 3600),
        TokenSigner(entry_key, "urr-queue", "urr-entry", 900),
    )
    upstream_port = free_port()
    nginx = start_nginx(work / "upstream", upstream_conf(work, upstream_port))
    redis = RedisServer(port=free_port(), workdir=work / "redis")
    upstream = f"http://127.0.0.1:{upstream_port}"
    env = {
        **os.environ,
        "URR_WORKERS": "1",
        "URR_REDIS__URL": "",
        "URR_UPSTREAMS__AUTH": upstream,
        "URR_UPSTREAMS__QUEUE": upstream,
        "URR_UPSTREAMS__TICKET": upstream,
        "URR_ACCESS_TRUST__JWKS_URL": f"{upstream}/access.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"{upstream}/entry.json",
        "URR_IDENTITY__PRIVATE_KEY_FILE": str(work / "identity" / "local-1.pem"),
        "URR_IDENTITY__KEY_ID": "local-1",
        # As the local stack sets them (urr_devstack.services): every client is 127.0.0.1.
        "URR_SHED__REQUESTS_PER_S": "20000",
        "URR_SHED__REQUEST_BURST": "40000",
        "URR_SHED__MAX_CONNECTIONS_PER_ADDRESS": "10000",
    }
    env.pop("PYTHONPATH", None)
    variants: list[tuple[str, str | None]] = [("this tree", None)]
    if before_path is not None:
        variants.insert(0, (f"before ({options.before})", before_path))
    runs: dict[str, list[Run]] = {label: [] for label, _ in variants}
    try:
        wait_listening("127.0.0.1", upstream_port, 10, "upstream nginx")
        redis.start()
        env["URR_REDIS__URL"] = redis.url
        print(f"machine: {os.cpu_count()} cores, load {Path('/proc/loadavg').read_text()[:15]}")
        for number in range(options.rounds):
            gateways = run_round(number, variants, env, signers, options, work)
            for gateway in gateways:
                runs[gateway.label].append(gateway.run)
                run = gateway.run
                print(
                    f"round {number + 1} {run.label}: crowd mix {weighted_us(run):.0f} µs/request, "
                    + ", ".join(f"{route} {per_request_us(run, route):.0f}" for route in ROUTES),
                    flush=True,
                )
        print_table(runs)
        if options.pyspy:
            profile = Path(options.pyspy) / "gateway.txt"
            if profile.exists():
                print("\nthis tree's gateway, last round:\n" + summarise_profile(profile))
    finally:
        nginx.terminate()
        nginx.wait(10)
        redis.stop()


if __name__ == "__main__":
    main()
