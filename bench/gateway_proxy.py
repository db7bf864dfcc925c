"""Gateway throughput and latency beside nginx, with wrk, in one run.

The same static upstream (nginx ``return 200``) behind each target:

1. the upstream alone;
2. nginx proxying to it with ``limit_req`` (one worker process);
3. a bare aiohttp proxy (one ``ClientSession``, no filters): what aiohttp itself costs;
   then the same on the gateway's lean upstream client, and that plus one decision of the
   gateway's pipelined limiter per request (the floor of a rate-limiting aiohttp proxy);
   then the floor of any Python proxy here (``gateway_floor.py``: raw uvloop protocols and
   llhttp on both sides, no coroutine) and the gateway with every filter step left out (its
   server, ingress, proxy and upstream client alone: the filters cost the difference);
4. the URR gateway of another revision (``--before REV``: the gateway package of that git
   revision, run from a ``git archive`` of it; by default the last one with aiohttp's
   ``ClientSession``);
5. the URR gateway (``python -m urr_gateway``, one worker, uvloop) with every filter, on the
   public server ``URR_HTTP__SERVER`` defaults to, then the same on the other server: the
   access token comes as the ``access_token`` cookie (cookie auth), is verified (JWT auth,
   keys from a JWKS the upstream nginx serves), the path is a seat route so the entry token
   is verified, the rate limiter decides in a private Redis (BOOKING raised so the single
   benchmark user is never refused) with the revocation lookup in the same script, then
   the request is proxied with the gateway's own upstream client.

Afterwards both gateways are profiled with py-spy under the same load and the hottest
functions are printed. Usage (needs ``wrk`` and ``nginx`` on PATH)::

    uv run python bench/gateway_proxy.py [--duration 12] [--connections 64]
        [--before 4a2f671] [--workers 1,2] [--env URR_SOME__SETTING=value ...]

``--workers 1,2`` also runs the gateway with ``URR_WORKERS`` = 1 and 2 (SO_REUSEPORT) and
prints them side by side (CPU counted over every worker process).

``--env`` passes settings to the gateway (e.g. the rate limiter's limits once it is merged,
so the benchmark's single user is not refused).
"""

# ruff: noqa: S603, S607 - a benchmark script running fixed tools (wrk, nginx, py-spy) from PATH
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from urr_common.tokens import KeySet, SigningKey, TokenSigner
from urr_devstack.procs import RedisServer, free_port, wait_listening
from urr_gateway.settings import GatewayHttpSettings

EVENT_ID = "bench-event"
#: The row the targets are judged on: the gateway on its default public server.
GATEWAY_ROW = "URR gateway, every filter"
#: ``URR_HTTP__GC_GEN0_THRESHOLD``'s default (the settings' own value, mirrored here so a
#: ``--before`` revision that predates it can be run with it).
SHIPPED_GC_GEN0 = 20_000


def gc_label(gen0: int) -> str:
    return "GC untuned (gen0 700, no freeze)" if gen0 == 0 else f"GC gen0 {gen0} + freeze"


SERVERS = ("protocol", "aiohttp")
PATH = f"/api/v1/seats/{EVENT_ID}/map"


@dataclass
class WrkResult:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: str
    requests: int = 0
    #: CPU seconds the serving process(es) used during the measured run, per request: on a
    #: shared machine this is the fair comparison (req/s depends on what else runs).
    cpu_us_per_request: float = 0.0
    #: Share of one core the serving process(es) got during the run.
    cpu_share: float = 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far (Linux /proc)."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid: int) -> list[int]:
    """nginx's worker processes (the master only supervises)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _nginx_conf(workdir: Path, body: str) -> str:
    return f"""
user root;
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
    {body}
}}
"""


def start_nginx(workdir: Path, body: str) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(_nginx_conf(workdir, body))
    return subprocess.Popen(
        ["nginx", "-p", str(workdir), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_upstream(work: Path, port: int) -> subprocess.Popen[bytes]:
    """The static upstream every target proxies to (nginx ``return 200``), serving the two
    JWKS files ``write_keys_and_sign`` wrote into ``work``."""
    return start_nginx(
        work / "upstream",
        f"""server {{
            listen 127.0.0.1:{port} backlog=4096;
            location = /access.json {{ alias {work}/access.json; }}
            location = /entry.json {{ alias {work}/entry.json; }}
            location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
        }}""",
    )


#: Header lines of one bench user's request; one list per user.
HeaderSets = list[list[str]]

#: Bench users wrk takes turns with: booking allows each 10,000 requests a second (the
#: sliding log's cap per window), so four keep every request under the limit up to 40,000/s
#: and the gateway rows measure proxied answers, not refusals.
BENCH_USERS = 4


def wrk_args(
    connections: int, seconds: int, url: str, header_sets: HeaderSets, latency: bool = True
) -> list[str]:
    """wrk's command line: one user's headers as ``-H``, several taken in turn by a script."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if latency:
        args.append("--latency")
    if len(header_sets) == 1:
        for header in header_sets[0]:
            args += ["-H", header]
    elif header_sets:
        args += ["-s", str(_rotation_script(header_sets))]
    return [*args, url]


def _rotation_script(header_sets: HeaderSets) -> Path:
    """A wrk script whose requests go to each user in turn (formatted once, at start)."""
    users = ",\n".join(
        "{"
        + ", ".join(
            f"[{json.dumps(name)}] = {json.dumps(value.strip())}"
            for name, value in (line.split(":", 1) for line in lines)
        )
        + "}"
        for lines in header_sets
    )
    handle, name = tempfile.mkstemp(prefix="urr-wrk-", suffix=".lua")
    with os.fdopen(handle, "w") as script:
        script.write(
            f"local users = {{\n{users}\n}}\n"
            "local requests, turn = {}, 0\n"
            "init = function(args)\n"
            "  for i, headers in ipairs(users) do\n"
            '    requests[i] = wrk.format("GET", nil, headers)\n'
            "  end\n"
            "end\n"
            "request = function()\n"
            "  turn = turn % #requests + 1\n"
            "  return requests[turn]\n"
            "end\n"
        )
    return Path(name)


def run_wrk(
    name: str,
    url: str,
    duration: int,
    connections: int,
    headers: HeaderSets,
    pids: list[int],
) -> WrkResult:
    # A short warm-up so connection set-up and first-use caches do not count.
    subprocess.run(wrk_args(connections, 2, url, headers), check=True, capture_output=True)
    args = wrk_args(connections, duration, url, headers)
    cpu_before, started = cpu_seconds(pids), time.monotonic()
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    cpu_used, elapsed = cpu_seconds(pids) - cpu_before, time.monotonic() - started
    result = parse_wrk(name, output)
    result.cpu_share = cpu_used / elapsed
    result.cpu_us_per_request = 1e6 * cpu_used / max(result.requests, 1)
    return result


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(name: str, output: str) -> WrkResult:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    percentiles = {
        match.group(1): _ms(match.group(2), match.group(3))
        for match in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    requests = re.search(r"(\d+) requests in", output)
    errors = re.search(r"Socket errors:.*", output)
    return WrkResult(
        name=name,
        requests_per_s=rps,
        p50_ms=percentiles["50"],
        p99_ms=percentiles["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=errors.group(0) if errors else "",
        requests=int(requests.group(1)) if requests else 0,
    )


def wait_http(url: str, timeout_s: float, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (loopback)
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:300]!r}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s}s; last: {last}")


def profile(
    pid: int, url: str, seconds: int, connections: int, headers: HeaderSets, out: Path
) -> str:
    """Sample the gateway with py-spy under load; a summary of where the time goes."""
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)
    subprocess.run(
        wrk_args(connections, seconds, url, headers, latency=False), check=True, capture_output=True
    )
    _, stderr = spy.communicate(timeout=seconds + 30)
    if not out.exists():
        return f"(py-spy produced no profile: {stderr.decode()[-300:]})"
    return summarise_profile(out)


#: Self time is charged to the first group whose needle the innermost frame contains. The
#: socket writes are the C ``send`` under those Python frames (py-spy shows no native frames).
_PACKAGES = [
    ("socket write to the client (aiohttp writer)", ("StreamWriter._writelines",)),
    ("socket write to the client (protocol server)", ("_PublicConnection.send",)),
    (
        "protocol server: parse, request view, answer",
        ("urr_gateway/publicserver", "urr_common/http1", "urr_gateway/publicrequest"),
    ),
    ("socket write to the upstream", ("UpstreamConnection.start",)),
    ("socket write to Redis (limiter pipeline)", ("RespPipe.send",)),
    ("event loop in C (uvloop: reads, epoll, callbacks)", ("Runner.run",)),
    ("jwt / cryptography (signature checks)", ("jwt/", "cryptography/")),
    ("redis-py (revocation EXISTS fallback)", ("redis/",)),
    ("limiter (urr_gateway/ratelimit)", ("urr_gateway/ratelimit/",)),
    ("upstream client (urr_gateway/upstream)", ("urr_gateway/upstream/",)),
    ("gateway pipeline, filters, proxy (urr_gateway)", ("urr_gateway/",)),
    ("urr_common (request id, metrics, problems)", ("urr_common/",)),
    ("structlog (log context per request)", ("structlog/",)),
    ("prometheus_client", ("prometheus_client/",)),
    ("aiohttp client", ("aiohttp/client", "aiohttp/connector")),
    ("aiohttp server and HTTP writer", ("aiohttp/", "aiosignal/")),
    ("cookies (http.cookies)", ("http/cookies",)),
    ("yarl / multidict", ("yarl/", "multidict/")),
    ("asyncio / event loop", ("asyncio/", "uvloop")),
]
#: Inclusive time of the steps of one request (nested: a step includes what runs inside it).
#: py-spy starts a resumed coroutine's stack where the task resumed it, so a step's share
#: counts only the samples taken while its own frame was on the stack.
_STEPS = [
    ("gateway pipeline (one middleware, everything inside)", "GatewayPipeline.middleware"),
    ("protocol server's pipeline (PublicServer.serve, everything inside)", "PublicServer.serve"),
    ("  ingress", "Ingress.__call__"),
    ("  cookie_auth", "cookie_auth_step"),
    ("  jwt_auth", "_JwtAuth."),
    ("  rate_limit (limiter decision in Redis)", "_RateLimit."),
    ("  auth_gate", "auth_gate_step"),
    ("  entry_token", "_EntryToken."),
    ("    revocation EXISTS (Redis)", "RedisRevocationCheck.is_revoked"),
    ("UpstreamProxy.handle (upstream call and relay)", "UpstreamProxy.handle"),
    ("UpstreamProxy.open (protocol server: upstream call)", "UpstreamProxy.open"),
    ("  upstream client send (pool, write, wait for headers)", "UpstreamClient.send"),
    ("  upstream connection data_received (llhttp)", "UpstreamConnection.data_received"),
    ("answer headers (on_response_prepare)", "install_response_headers"),
    # The gateway before the pipeline (``--before`` of an older revision profiles nothing, but
    # a profile of an older checkout still names its middlewares).
    ("request_context_middleware (older gateways)", "request_context_middleware"),
]


def summarise_profile(raw: Path) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    steps: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_time[_short(frames[-1])] += count
        innermost = frames[-1]
        package = next(
            (label for label, needles in _PACKAGES if any(n in innermost for n in needles)),
            "other (interpreter, GC, stdlib)",
        )
        packages[package] += count
        for label, needle in _STEPS:
            if any(needle in frame for frame in frames):
                steps[label] += count
    if not total:
        return "py-spy: no samples"
    lines = [f"py-spy: {total} samples of the gateway process under the same load"]
    lines.append("inclusive time of each request step:")
    for label, _ in _STEPS:
        lines.append(f"  {100 * steps[label] / total:5.1f}%  {label}")
    lines.append("self time by package:")
    for label, count in packages.most_common():
        lines.append(f"  {100 * count / total:5.1f}%  {label}")
    lines.append("hottest functions (self time):")
    for name, count in self_time.most_common(12):
        lines.append(f"  {100 * count / total:5.1f}%  {name}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    match = re.match(r"(.*) \((.*?):?(\d*)\)$", frame)
    if not match:
        return frame
    function, path, _ = match.groups()
    parts = path.split("/")
    return f"{function} ({'/'.join(parts[-2:])})"


def serve_bare_proxy(
    port: int, upstream: str, lean: bool = False, redis_url: str | None = None
) -> None:
    """A baseline: the least an aiohttp proxy does (one client, read, answer), no filters.

    ``lean``: the same with the gateway's own upstream client instead of a ``ClientSession``
    (what the client alone saves, with nothing else changed). ``redis_url`` (with ``lean``):
    plus one decision of the gateway's pipelined limiter per request, nothing else: the floor
    of a rate-limiting proxy on an aiohttp server.
    """
    import aiohttp
    from aiohttp import web
    from multidict import CIMultiDict

    from urr_common.service import run
    from urr_gateway.upstream import PoolLimits, UpstreamClient

    async def main() -> None:
        session = aiohttp.ClientSession(
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        client = UpstreamClient({"up": upstream}, PoolLimits(512, 2.0, 2.0, 30.0, 30.0))
        limiter = None
        if redis_url is not None:
            from redis.asyncio import Redis

            from urr_gateway.ratelimit import SlidingWindowLimiter
            from urr_gateway.ratelimit.config import RateLimitSettings

            limiter = SlidingWindowLimiter(
                Redis.from_url(redis_url),
                RateLimitSettings.model_validate({"categories": json.loads(BENCH_CATEGORIES)}),
            )
            await limiter.prepare()

        async def handler(request: web.Request) -> web.Response:
            async with session.get(upstream + request.path_qs) as answer:
                body = await answer.read()
                return web.Response(status=answer.status, body=body)

        async def lean_handler(request: web.Request) -> web.Response:
            answer = await client.send("up", request.method, request.path_qs, CIMultiDict())
            try:
                body = await answer.read()
            finally:
                answer.close()
            return web.Response(status=answer.status, body=body)

        async def limited_handler(request: web.Request) -> web.Response:
            assert limiter is not None
            # One subject per wrk connection: one address alone would pass booking's 10,000
            # a second, and the row would measure refusals.
            transport = request.transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            decision = await limiter.check(f"peer:{peer}", "booking")
            if not decision.allowed:
                return web.Response(status=429)
            return await lean_handler(request)

        app = web.Application()
        chosen = limited_handler if limiter is not None else lean_handler if lean else handler
        app.router.add_route("*", "/{tail:.*}", chosen)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            await asyncio.Event().wait()
        finally:
            await session.close()
            await client.close()
            await runner.cleanup()

    run(main, use_uvloop=True)


#: The last revision whose gateway proxied with aiohttp's ``ClientSession`` ("before").
BEFORE_REVISION = "4a2f671"
#: BOOKING raised for the single benchmark user (the other categories as shipped).
BENCH_CATEGORIES = json.dumps(
    {
        "auth": {"windows": [{"limit": 20, "window_s": 60}], "failure_policy": "local"},
        "queue": {"windows": [{"limit": 60, "window_s": 60}]},
        "booking": {"windows": [{"limit": 10_000, "window_s": 1}]},
        "general": {"windows": [{"limit": 100, "window_s": 60}]},
    }
)


def gateway_source(revision: str, into: Path) -> Path | None:
    """``services/gateway/src`` of ``revision`` extracted into ``into`` (None: not found),
    with that revision's ``urr_common`` beside ``urr_gateway`` in it: the "before" row runs
    that revision's shared HTTP/1.1 and RESP code too, not this tree's (which may be compiled
    by mypyc)."""
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", revision, "services/gateway/src", "libs/common/src"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        print(f"(no 'before' run: git archive {revision}: {archive.stderr.decode()[:200]})")
        return None
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    src = into / "services" / "gateway" / "src"
    (into / "libs" / "common" / "src" / "urr_common").rename(src / "urr_common")
    return src


def print_results(
    results: list[WrkResult], options: argparse.Namespace, load_before: list[str], metrics_port: int
) -> None:
    nginx_rps = results[1].requests_per_s
    bare_rps = results[2].requests_per_s
    print(f"\nwrk -t1 -c{options.connections} -d{options.duration}s, path {PATH}")
    print(f"load average before the runs: {load_before}")
    print(
        f"{'target':44} {'req/s':>8} {'P50 ms':>7} {'P99 ms':>7} {'vs nginx':>8}"
        f" {'vs bare':>7} {'CPU us/req':>10} {'core share':>10} non-2xx"
    )
    for result in results:
        print(
            f"{result.name:44} {result.requests_per_s:8.0f} {result.p50_ms:7.2f} "
            f"{result.p99_ms:7.2f} {result.requests_per_s / nginx_rps:7.2f}x "
            f"{result.requests_per_s / bare_rps:6.2f}x "
            f"{result.cpu_us_per_request:10.0f} {result.cpu_share:10.2f} {result.non_2xx}"
            + (f"  {result.errors}" if result.errors else "")
        )
    # /metrics is served on the gateway's metrics listener, never on the public port.
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as answer:
        exposition = answer.read().decode()
    for line in exposition.splitlines():
        # The limiter's fail-open decisions (budget missed, breaker open) cost less than a
        # Redis decision: how many there were says what the gateway's figure measured.
        if line.startswith(
            (
                "urr_gateway_revocation",
                "urr_gateway_upstream_errors",
                "urr_ratelimit_decisions_total",
                "urr_ratelimit_degraded_decisions_total",
                "urr_ratelimit_redis_errors_total",
            )
        ):
            print(f"gateway metric: {line}")
    gateway = next(r for r in results if r.name.startswith(GATEWAY_ROW))
    print(
        f"targets (one worker): >= 10,000 req/s: {gateway.requests_per_s:.0f}; "
        f"P99 <= 10 ms: {gateway.p99_ms:.2f}; <= 100 CPU us/req: "
        f"{gateway.cpu_us_per_request:.0f}; >= 1.25x bare aiohttp: "
        f"{gateway.requests_per_s / bare_rps:.2f}x"
    )
    print(
        f"per core: the gateway's CPU cost means ~{1e6 / gateway.cpu_us_per_request:.0f} "
        f"req/s per fully used core (nginx proxy: ~{1e6 / results[1].cpu_us_per_request:.0f})"
    )


def write_keys_and_sign(work: Path, users: int = 1) -> list[tuple[str, str]]:
    """Write the two JWKS files the upstream nginx serves; an access and an entry token for
    each of ``users`` bench users (``bench-user``, ``bench-user-2``, ...)."""
    access_key = SigningKey.generate("bench-access")
    entry_key = SigningKey.generate("bench-entry")
    (work / "access.json").write_text(json.dumps(KeySet([access_key.verification_key()]).to_jwks()))
    (work / "entry.json").write_text(json.dumps(KeySet([entry_key.verification_key()]).to_jwks()))
    access = TokenSigner(access_key, "urr-auth", "urr", 3600)
    entry = TokenSigner(entry_key, "urr-queue", "urr-entry", 3600)
    signed = []
    for number in range(1, users + 1):
        user = "bench-user" if number == 1 else f"bench-user-{number}"
        signed.append(
            (
                access.sign(user, {"email": f"{user}@example.com", "role": "user"}),
                entry.sign(user, {"evt": EVENT_ID}),
            )
        )
    return signed


def user_headers(access_token: str, entry_token: str) -> list[str]:
    """The header lines of one bench user's request."""
    return [f"Cookie: access_token={access_token}", f"x-queue-entry-token: {entry_token}"]


def gateway_env(redis_url: str, upstream: str) -> dict[str, str]:
    """The gateway's environment: every upstream and both JWKS on the static nginx, the
    benchmark's rate-limit categories, a private Redis."""
    return {
        **os.environ,
        "URR_HTTP__USE_UVLOOP": "true",
        "URR_LOG__LEVEL": "WARNING",
        "URR_REDIS__URL": redis_url,
        "URR_UPSTREAMS__AUTH": upstream,
        "URR_UPSTREAMS__QUEUE": upstream,
        "URR_UPSTREAMS__TICKET": upstream,
        "URR_ACCESS_TRUST__JWKS_URL": f"{upstream}/access.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"{upstream}/entry.json",
        "URR_RATE_LIMIT__CATEGORIES": BENCH_CATEGORIES,
        # wrk is one address: the per-address shedder (on, as deployed) is given a budget
        # wrk never reaches, so its cost is measured, not its refusals (compare with
        # --env URR_SHED__ENABLED=false).
        "URR_SHED__REQUESTS_PER_S": "1000000",
        "URR_SHED__REQUEST_BURST": "1000000",
    }


def launch_gateway(
    base_env: dict[str, str],
    ready_headers: dict[str, str],
    processes: list[subprocess.Popen[bytes]],
    workers: int,
    pythonpath: Path | None = None,
    command_prefix: tuple[str, ...] = (),
    ready_timeout_s: float = 90,
    entry: tuple[str, ...] = ("-m", "urr_gateway"),
) -> tuple[int, int, int]:
    """Start ``python -m urr_gateway`` with ``workers`` workers; ``(port, pid, metrics port)``
    once ready (a gateway from before the metrics listener ignores that setting).
    ``command_prefix``: a tool to run it under (valgrind). ``entry``: what Python runs
    (``gateway_floor.py``: the gateway without its filters)."""
    port, metrics_port = free_port(), free_port()
    env = {
        **base_env,
        "URR_HTTP__PORT": str(port),
        "URR_WORKERS": str(workers),
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_METRICS__PORT": str(metrics_port),
    }
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    process = subprocess.Popen(
        [*command_prefix, sys.executable, *entry], env=env, stdout=subprocess.DEVNULL
    )
    processes.append(process)
    wait_http(f"http://127.0.0.1:{port}{PATH}", ready_timeout_s, ready_headers)
    return port, process.pid, metrics_port


def gateway_pids(pid: int, workers: int) -> list[int]:
    """The processes whose CPU counts: the gateway, and its workers when it has several."""
    if workers == 1:
        return [pid]
    deadline = time.monotonic() + 60
    while len(found := children(pid)) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{workers} workers expected, found {found}")
        time.sleep(0.2)
    return [pid, *found]


def serve_if_asked(options: argparse.Namespace) -> bool:
    """Run one of the baseline proxies when the options ask for one (a child process)."""
    if options.serve_raw_proxy:
        from gateway_floor import serve_raw_proxy

        serve_raw_proxy(int(options.serve_raw_proxy[0]), options.serve_raw_proxy[1])
        return True
    if options.serve_limited_proxy:
        port, upstream, redis_url = options.serve_limited_proxy
        serve_bare_proxy(int(port), upstream, True, redis_url)
        return True
    for served, use_lean in ((options.serve_bare_proxy, False), (options.serve_lean_proxy, True)):
        if served:
            serve_bare_proxy(int(served[0]), served[1], use_lean)
            return True
    return False


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in reversed(processes):
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def repeat_gateway_rows(
    runs: list[tuple[str, str, HeaderSets, list[int]]], options: argparse.Namespace
) -> None:
    """``--rounds``: the gateway rows again, in turn, so that before/after and the GC rows
    are compared across rounds instead of one pass of a load that drifts (neighbours).

    Even rounds run the rows in reverse, so that a drift within a round (this host's speed
    moves by 20-30 % within minutes) does not always fall on the same row. Alternating did
    not make the figures agree: the same code measured 8,646-15,154 req/s in one hour."""
    for number in range(2, options.rounds + 1):
        load = Path("/proc/loadavg").read_text().split()[:3]
        order = "in reverse order" if number % 2 == 0 else "in the first round's order"
        print(
            f"round {number}, {order}, load average before it: {load} "
            "(req/s, P50, P99, CPU us, share)"
        )
        for name, url, run_headers, pids in runs if number % 2 else reversed(runs):
            result = run_wrk(name, url, options.duration, options.connections, run_headers, pids)
            print(
                f"{name:44} {result.requests_per_s:8.0f} {result.p50_ms:7.2f} "
                f"{result.p99_ms:7.2f} {result.cpu_us_per_request:10.0f} {result.cpu_share:10.2f}"
            )


def keep_profiles(work: Path, into: str) -> None:
    """Copy the raw py-spy stacks into ``into`` (if given), for a closer look than the summary."""
    if not into:
        return
    kept = Path(into)
    kept.mkdir(parents=True, exist_ok=True)
    for raw in work.glob("profile*.txt"):
        shutil.copy(raw, kept / raw.name)


def start_interpreted(
    start_gateway: Callable[[int], tuple[int, int, int]],
    base_env: dict[str, str],
    headers: HeaderSets,
) -> list[tuple[str, str, HeaderSets, list[int]]]:
    """The row of this tree's gateway interpreted beside its compiled build
    (``urr_common.native``), in the same run; none when the tree runs interpreted anyway."""
    # Imported here: checkapi_latency.py imports this module under a revision without it.
    from urr_common import native

    print(f"this tree's gateway: {native.status().reason}")
    if not native.status().active:
        return []
    base_env["URR_NATIVE"] = "0"
    try:
        port, pid, _ = start_gateway(1)
    finally:
        del base_env["URR_NATIVE"]
    url = f"http://127.0.0.1:{port}{PATH}"
    return [("  same, interpreted (URR_NATIVE=0)", url, headers, [pid])]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=12)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--profile-seconds", type=int, default=10, help="0 skips the py-spy profiles"
    )
    parser.add_argument(
        "--before",
        default=BEFORE_REVISION,
        help="git revision of the gateway to run as 'before' ('' to skip)",
    )
    parser.add_argument(
        "--workers", default="", help="also run URR_WORKERS=N for these N, e.g. 1,2"
    )
    parser.add_argument("--rounds", type=int, default=1, help="gateway rows this many times")
    parser.add_argument("--keep-profiles", default="", help="copy the raw py-spy stacks here")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the gateway")
    parser.add_argument(
        "--gc-gen0",
        type=int,
        default=0,
        help=(
            "also run the default gateway with URR_HTTP__GC_GEN0_THRESHOLD=N (default 0: the "
            f"interpreter's collector, beside the shipped {SHIPPED_GC_GEN0}; -1: skip), and the "
            f"'before' revision with {SHIPPED_GC_GEN0} beside its own default"
        ),
    )
    parser.add_argument("--serve-bare-proxy", nargs=2, metavar=("PORT", "UPSTREAM"))
    parser.add_argument("--serve-lean-proxy", nargs=2, metavar=("PORT", "UPSTREAM"))
    parser.add_argument("--serve-limited-proxy", nargs=3, metavar=("PORT", "UPSTREAM", "REDIS"))
    parser.add_argument("--serve-raw-proxy", nargs=2, metavar=("PORT", "UPSTREAM"))
    options = parser.parse_args()
    if serve_if_asked(options):
        return
    # py-spy only samples the profiles: --profile-seconds 0 runs without it.
    tools = ("wrk", "nginx", "py-spy") if options.profile_seconds > 0 else ("wrk", "nginx")
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (apt-get install wrk nginx; uv sync for py-spy)")

    work = Path(tempfile.mkdtemp(prefix="urr-bench-gateway-"))
    processes: list[subprocess.Popen[bytes]] = []
    redis = RedisServer(port=free_port(), workdir=work / "redis")
    try:
        users = write_keys_and_sign(work, BENCH_USERS)
        access_token, entry_token = users[0]
        upstream_port, nginx_port, bare_port = free_port(), free_port(), free_port()
        processes.append(start_upstream(work, upstream_port))
        processes.append(
            start_nginx(
                work / "proxy",
                f"""limit_req_zone $binary_remote_addr zone=api:10m rate=1000000r/s;
                upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
                server {{
                    listen 127.0.0.1:{nginx_port} backlog=4096;
                    location / {{
                        limit_req zone=api burst=100000 nodelay;
                        proxy_http_version 1.1;
                        proxy_set_header Connection "";
                        proxy_pass http://app;
                    }}
                }}""",
            )
        )
        wait_listening("127.0.0.1", upstream_port, 10, "upstream nginx")
        wait_listening("127.0.0.1", nginx_port, 10, "proxy nginx")
        redis.start()
        upstream = f"http://127.0.0.1:{upstream_port}"
        base_env = gateway_env(redis.url, upstream)
        base_env.update(item.split("=", 1) for item in options.env)
        headers = [user_headers(*user) for user in users]
        ready_headers = {
            "Cookie": f"access_token={access_token}",
            "x-queue-entry-token": entry_token,
        }

        def start_gateway(workers: int, pythonpath: Path | None = None) -> tuple[int, int, int]:
            return launch_gateway(base_env, ready_headers, processes, workers, pythonpath)

        # The default public server (or the one --env names), and the other one beside it.
        default = base_env.get("URR_HTTP__SERVER") or GatewayHttpSettings().server
        other = next(server for server in SERVERS if server != default)
        base_env["URR_HTTP__SERVER"] = default
        gateway_port, gateway_pid, gateway_metrics_port = start_gateway(1)
        base_env["URR_HTTP__SERVER"] = other
        other_port, other_pid, _ = start_gateway(1)
        base_env["URR_HTTP__SERVER"] = default
        interpreted_rows = start_interpreted(start_gateway, base_env, headers)
        tuned_port = tuned_pid = 0
        if options.gc_gen0 >= 0:
            base_env["URR_HTTP__GC_GEN0_THRESHOLD"] = str(options.gc_gen0)
            tuned_port, tuned_pid, _ = start_gateway(1)
            del base_env["URR_HTTP__GC_GEN0_THRESHOLD"]
        before = gateway_source(options.before, work / "before") if options.before else None
        # (row label, port, pid) of the 'before' revision's gateways: as it is, and with the
        # GC setting when --gc-gen0 asks for it (its effect on both revisions, same run).
        before_rows: list[tuple[str, int, int]] = []
        before_gen0s = [0, SHIPPED_GC_GEN0][: 2 if options.gc_gen0 >= 0 else 1]
        for gen0 in before_gen0s if before is not None else []:
            label = f"gateway before ({options.before})"
            if gen0:
                label = f"  before, GC gen0 {gen0} + freeze"
                base_env["URR_HTTP__GC_GEN0_THRESHOLD"] = str(gen0)
            port, pid, _ = start_gateway(1, before)
            base_env.pop("URR_HTTP__GC_GEN0_THRESHOLD", None)
            before_rows.append((label, port, pid))
        bare = subprocess.Popen(
            [sys.executable, __file__, "--serve-bare-proxy", str(bare_port), upstream],
            stdout=subprocess.DEVNULL,
        )
        processes.append(bare)
        lean_port = free_port()
        lean_proxy = subprocess.Popen(
            [sys.executable, __file__, "--serve-lean-proxy", str(lean_port), upstream],
            stdout=subprocess.DEVNULL,
        )
        processes.append(lean_proxy)
        limited_port = free_port()
        limited_proxy = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-limited-proxy",
                str(limited_port),
                upstream,
                redis.url,
            ],
            stdout=subprocess.DEVNULL,
        )
        processes.append(limited_proxy)
        raw_port = free_port()
        raw_proxy = subprocess.Popen(
            [sys.executable, __file__, "--serve-raw-proxy", str(raw_port), upstream],
            stdout=subprocess.DEVNULL,
        )
        processes.append(raw_proxy)
        unfiltered_port, unfiltered_pid, _ = launch_gateway(
            base_env,
            ready_headers,
            processes,
            1,
            entry=(str(Path(__file__).with_name("gateway_floor.py")),),
        )
        wait_http(f"http://127.0.0.1:{raw_port}{PATH}", 60)
        wait_http(f"http://127.0.0.1:{bare_port}{PATH}", 60)
        wait_http(f"http://127.0.0.1:{lean_port}{PATH}", 60)
        wait_http(f"http://127.0.0.1:{limited_port}{PATH}", 60)

        local = "http://127.0.0.1"
        # Both servers must answer alike to be a fair comparison: same status, same header
        # names (values such as the request id and Date differ per request).
        for label, port in ((default, gateway_port), (other, other_port)):
            request = urllib.request.Request(f"{local}:{port}{PATH}", headers=ready_headers)  # noqa: S310
            with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 (loopback)
                names = sorted({name.lower() for name in answer.headers})
                print(f"{label} answers {answer.status} with headers: {', '.join(names)}")
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        runs: list[tuple[str, str, HeaderSets, list[int]]] = [
            (
                "upstream alone (nginx return 200)",
                f"{upstream}{PATH}",
                [[]],
                children(processes[0].pid),
            ),
            (
                "nginx proxy + limit_req",
                f"{local}:{nginx_port}{PATH}",
                [[]],
                children(processes[1].pid),
            ),
            ("bare aiohttp proxy (no filters)", f"{local}:{bare_port}{PATH}", [[]], [bare.pid]),
            ("bare proxy, lean client", f"{local}:{lean_port}{PATH}", [[]], [lean_proxy.pid]),
            (
                "lean proxy + one limiter decision",
                f"{local}:{limited_port}{PATH}",
                [[]],
                [limited_proxy.pid],
            ),
            ("floor: raw protocol proxy", f"{local}:{raw_port}{PATH}", [[]], [raw_proxy.pid]),
            (
                f"gateway, no filters ({default})",
                f"{local}:{unfiltered_port}{PATH}",
                headers,
                [unfiltered_pid],
            ),
        ]
        references = len(runs)
        runs.extend(
            (label, f"{local}:{port}{PATH}", headers, [pid]) for label, port, pid in before_rows
        )
        runs.append(
            (
                f"{GATEWAY_ROW} ({default})",
                f"{local}:{gateway_port}{PATH}",
                headers,
                [gateway_pid],
            )
        )
        runs.extend(interpreted_rows)
        runs.append(
            (
                f"  same, URR_HTTP__SERVER={other}",
                f"{local}:{other_port}{PATH}",
                headers,
                [other_pid],
            )
        )
        if tuned_pid:
            runs.append(
                (
                    f"  {default}, {gc_label(options.gc_gen0)}",
                    f"{local}:{tuned_port}{PATH}",
                    headers,
                    [tuned_pid],
                )
            )
        for workers in [int(n) for n in options.workers.split(",") if n.strip()]:
            port, pid, _ = start_gateway(workers)
            runs.append(
                (
                    f"URR gateway, URR_WORKERS={workers}",
                    f"http://127.0.0.1:{port}{PATH}",
                    headers,
                    gateway_pids(pid, workers),
                )
            )
        results = [
            run_wrk(name, url, options.duration, options.connections, run_headers, pids)
            for name, url, run_headers, pids in runs
        ]
        print_results(results, options, load_before, gateway_metrics_port)
        repeat_gateway_rows(runs[references:], options)
        if options.profile_seconds <= 0:
            return  # wrk refuses -d0s; no profile was asked for
        print()
        print(
            profile(
                gateway_pid,
                f"http://127.0.0.1:{gateway_port}{PATH}",
                options.profile_seconds,
                options.connections,
                headers,
                work / "profile.txt",
            )
        )
        print(f"\nthe gateway on URR_HTTP__SERVER={other}, same load:")
        print(
            profile(
                other_pid,
                f"http://127.0.0.1:{other_port}{PATH}",
                options.profile_seconds,
                options.connections,
                headers,
                work / "profile-other.txt",
            )
        )
    finally:
        stop_all(processes)
        redis.stop()
        keep_profiles(work, options.keep_profiles)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
