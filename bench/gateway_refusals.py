"""What a forged-token flood costs the gateway, and what legitimate traffic sees meanwhile.

Issue 16: every forged token cost a full ES256 verify, was never remembered and was refused
before the rate limiter, so ~2,750 forged req/s pushed legitimate P50 to 350 ms. Now a bad
token makes the caller anonymous for the limiter, is refused after it, and is remembered by
hash for a short while; and a flood from one address is shed before HTTP parsing
(``urr_gateway.shedding``: per-address connection cap and request budget, reading paused).

Each variant (``--variants``, default ``unshed,shed``) is one ``python -m urr_gateway``
(one worker, uvloop) in front of the same nginx upstream (which also serves the JWKS) and a
private Redis, measured one after the other:

- ``unshed``: this tree with ``URR_SHED__ENABLED=false``, limits 200/s per subject, so the
  flood's address is over its limit (answered from the limiter's deny cache, 429);
- ``shed``: this tree as deployed (shedder on, default budget), same limits;
- ``unshed-high`` / ``shed-high``: the same with limits of 10,000/s (every forged request
  that is parsed is a Redis limiter call and a 401 from the refused-token cache);
- ``main``: the source of ``main`` (``git archive``), same interpreter and packages.

Two measurements per variant:

1. CPU µs per forged-token request: an open-loop flood of one forged token (a valid-looking
   ES256 JWT under the trusted ``kid``, signed by another key) at ``--cpu-rate``/s; the
   gateway process's CPU time over the answers it gave and over the requests sent.
2. Legitimate P50/P99: one logged-in client at ``--legit-rate``/s from 127.0.0.1, alone
   (idle) and while the flood runs from 127.0.0.2 at 3x one worker's verify capacity
   (measured in this process first: 1 / the time of one ES256 verify); the ratio of flooded
   to idle P99 against the target (< 2x), the flood's answers, and the gateway's CPU.

The flood and the legitimate client are raw keep-alive sockets driven by asyncio in child
processes (the flood pipelines its requests over 16 connections and only counts answers), so
the generator stays cheap. Usage (needs ``nginx``; ~75 s for the default two variants)::

    uv run python bench/gateway_refusals.py [--seconds 8] [--legit-rate 50] [--variants ...]

The machine is shared: figures are noisy; compare the columns of one run.
"""

# ruff: noqa: S603, S607 - a benchmark running fixed tools (nginx, git, python) from PATH
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway_proxy import cpu_seconds, start_nginx, wait_http

from urr_common.tokens import KeySet, SigningKey, TokenSigner, TokenVerifier
from urr_devstack.procs import RedisServer, free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent
PATH = "/api/v1/events/bench"
#: The flood is limited per second, the legitimate user is far under the same limit.
CATEGORIES = {
    name: {"windows": [{"limit": 200, "window_s": 1}]}
    for name in ("auth", "queue", "booking", "general")
}
#: Limits no client of this benchmark reaches: every forged request goes to Redis.
HIGH_CATEGORIES = {
    name: {"windows": [{"limit": 10_000, "window_s": 1}]}
    for name in ("auth", "queue", "booking", "general")
}


#: Bytes a flood connection may have queued in its own process before it skips requests.
_MAX_UNSENT = 256 * 1024
#: The flood comes from here, the legitimate client from 127.0.0.1 (all of 127/8 is loopback
#: on Linux): the shedder budgets per peer address.
FLOOD_SOURCE = "127.0.0.2"


def _request(token: str) -> bytes:
    return (f"GET {PATH} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n").encode()


async def _flood(
    port: int, token: str, rate: float, seconds: float, connections: int, source: str
) -> None:
    """Open loop: ``rate`` requests/s spread over ``connections`` from ``source``, answers
    only counted. A connection whose socket no longer takes data (the gateway stopped
    reading it: TCP backpressure) is skipped, and what it would have sent is counted as
    ``held_back``: a real flooder cannot send faster than TCP lets it either."""
    request = _request(token)
    answered = 0
    held_back = 0

    async def drain(reader: asyncio.StreamReader) -> None:
        nonlocal answered
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                return
            answered += chunk.count(b"HTTP/1.1 ")

    streams = [
        await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        for _ in range(connections)
    ]
    readers = [asyncio.create_task(drain(reader)) for reader, _ in streams]
    print(json.dumps({"connected": connections}), flush=True)  # the parent starts its clock
    tick = 0.005
    per_tick = rate * tick
    owed = 0.0
    sent = 0
    started = time.monotonic()
    while (now := time.monotonic()) - started < seconds:
        owed = rate * (now - started) - sent
        batch = int(owed)
        for index in range(batch):
            writer = streams[(sent + index) % connections][1]
            if writer.transport.get_write_buffer_size() > _MAX_UNSENT:
                held_back += 1
            else:
                writer.write(request)
        sent += batch
        await asyncio.sleep(tick if per_tick >= 1 else 1 / rate)
    await asyncio.sleep(1.0)
    for _, writer in streams:
        writer.close()
    for task in readers:
        task.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime
    print(
        json.dumps({"sent": sent, "answered": answered, "held_back": held_back, "cpu_s": cpu_s}),
        flush=True,
    )


async def _legit(port: int, token: str, rate: float, seconds: float) -> None:
    """One request at a time at ``rate``/s on one connection; prints the latencies (ms)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = _request(token)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    started = time.monotonic()
    next_at = started
    while time.monotonic() - started < seconds:
        sent_at = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        latencies.append(1000 * (time.perf_counter() - sent_at))
        status = head.split(b" ", 2)[1].decode()
        statuses[status] = statuses.get(status, 0) + 1
        next_at += 1 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    writer.close()
    print(json.dumps({"latencies": latencies, "statuses": statuses}), flush=True)


@dataclass(frozen=True)
class Setup:
    categories: Mapping[str, object]
    #: Run ``main``'s source instead of this tree's (``--variants`` ``main``).
    pythonpath: str | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Gateway:
    name: str
    process: subprocess.Popen[bytes]
    port: int


def start_gateway(name: str, env: dict[str, str], setup: Setup) -> Gateway:
    port = free_port()
    run_env = {
        **env,
        **setup.env,
        "URR_HTTP__PORT": str(port),
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_RATE_LIMIT__CATEGORIES": json.dumps(setup.categories),
    }
    pythonpath = setup.pythonpath
    if pythonpath:
        run_env["PYTHONPATH"] = pythonpath
    process = subprocess.Popen(
        [sys.executable, "-m", "urr_gateway"], env=run_env, stdout=subprocess.DEVNULL
    )
    wait_listening("127.0.0.1", port, 60, name, process)
    return Gateway(name, process, port)


def child(kind: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, f"--{kind}", *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = process.communicate(timeout=300)
    value: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return value


def forged_cpu(gateway: Gateway, token: str, rate: float, seconds: float) -> dict[str, float]:
    """The gateway's CPU µs per forged request answered and per forged request sent."""
    before = cpu_seconds([gateway.process.pid])
    flood = result_of(child("flood", gateway.port, token, rate, seconds, 8, FLOOD_SOURCE))
    used = cpu_seconds([gateway.process.pid]) - before
    answered = int(str(flood["answered"]))
    sent = int(str(flood["sent"]))
    return {
        "per_answered": 1e6 * used / max(answered, 1),
        "per_sent": 1e6 * used / max(sent, 1),
        "answered": answered,
        "sent": sent,
    }


def legit_run(
    gateway: Gateway, token: str, rate: float, seconds: float, flood: tuple[str, float] | None
) -> dict[str, object]:
    flooder = None
    before = cpu_seconds([gateway.process.pid])
    if flood is not None:
        flooder = child("flood", gateway.port, flood[0], flood[1], seconds + 1, 16, FLOOD_SOURCE)
        assert flooder.stdout is not None
        flooder.stdout.readline()  # connected (an interpreter start takes a while) ...
        # ... and a second of flood before the first measured request: steady state, and an
        # address's burst (the shedder's and the limiter's) spent before the clock starts.
        time.sleep(1.0)
    legit = result_of(child("legit", gateway.port, token, rate, seconds))
    flooded = result_of(flooder) if flooder is not None else None
    used = cpu_seconds([gateway.process.pid]) - before
    latencies = sorted(float(v) for v in legit["latencies"])  # type: ignore[attr-defined]
    return {
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "n": len(latencies),
        "statuses": legit["statuses"],
        "flood": flooded,
        "cpu_s": used,
    }


#: ``--variants`` names and the row each prints.
VARIANTS = {
    "main": "before (main's source)",
    "unshed": "without shedder",
    "unshed-high": "without shedder, limit 10k/s",
    "shed": "with shedder (defaults)",
    "shed-high": "with shedder, limit 10k/s",
}


def print_rows(
    rows: list[tuple[str, dict[str, float], dict[str, object], dict[str, object]]],
    options: argparse.Namespace,
) -> None:
    print(
        f"{'':32}{'CPU µs/forged':>14}{'CPU µs/forged':>14}  {'idle P50/P99 ms':>17}  "
        f"{'flooded P50/P99 ms':>19}  {'P99 x':>6}  {'CPU µs/flood req':>16}"
    )
    print(
        f"{'':32}{'answered':>14}{f'sent@{options.cpu_rate:.0f}/s':>14}  {'':>17}  {'':>19}  "
        f"{'idle':>6}  {'sent, flooded':>16}"
    )
    for name, cpu, idle, flooded in rows:
        ratio = float(str(flooded["p99"])) / max(float(str(idle["p99"])), 1e-6)
        flood = flooded["flood"]
        assert isinstance(flood, dict)
        per_sent = 1e6 * float(str(flooded["cpu_s"])) / max(int(flood["sent"]), 1)
        print(
            f"{name:32}{cpu['per_answered']:14.0f}{cpu['per_sent']:14.0f}  "
            f"{idle['p50']:7.1f} / {idle['p99']:7.1f}  "
            f"{flooded['p50']:8.1f} / {flooded['p99']:7.1f}  {ratio:5.1f}x  {per_sent:16.1f}"
        )
    print()
    for name, cpu, idle, flooded in rows:
        flood = flooded["flood"]
        assert isinstance(flood, dict)
        ratio = float(str(flooded["p99"])) / max(float(str(idle["p99"])), 1e-6)
        verdict = "met" if ratio < 2 else "missed"
        print(
            f"{name}: CPU run {cpu['answered']:.0f}/{cpu['sent']:.0f} answered; legit statuses "
            f"idle {idle['statuses']}, flooded {flooded['statuses']} (n={flooded['n']}); "
            f"flood answered {flood['answered']:,} of {flood['sent']:,} sent "
            f"({flood['held_back']:,} held back by TCP); gateway CPU idle "
            f"{100 * float(str(idle['cpu_s'])) / options.seconds:.0f}%, while flooded "
            f"{100 * float(str(flooded['cpu_s'])) / (options.seconds + 1):.0f}% of a core, "
            f"the flood generator's {100 * flood['cpu_s'] / (options.seconds + 2):.0f}%; "
            f"flooded P99 / idle P99 = {ratio:.1f}x (target < 2x: {verdict})"
        )


def verify_capacity(token: str, key: SigningKey) -> float:
    """Forged tokens one core verifies per second (pyjwt + cryptography, ES256)."""
    verifier = TokenVerifier(KeySet([key.verification_key()]), "urr-auth", "urr")
    rounds = 300
    started = time.perf_counter()
    for _ in range(rounds):
        try:
            verifier.verify(token)
        except Exception:  # noqa: S112 - the forged token is refused, as intended
            continue
    return rounds / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--legit-rate", type=float, default=50.0)
    parser.add_argument("--cpu-rate", type=float, default=1500.0)
    parser.add_argument(
        "--variants",
        default="unshed,shed",
        help=f"comma-separated, in order, of: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--flood", nargs=6)
    parser.add_argument("--legit", nargs=4)
    options = parser.parse_args()
    if options.flood:
        port, token, rate, seconds, connections, source = options.flood
        asyncio.run(_flood(int(port), token, float(rate), float(seconds), int(connections), source))
        return
    if options.legit:
        port, token, rate, seconds = options.legit
        asyncio.run(_legit(int(port), token, float(rate), float(seconds)))
        return
    variants = [name.strip() for name in options.variants.split(",") if name.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        sys.exit(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if shutil.which("nginx") is None:
        sys.exit("nginx is not on PATH (apt-get install nginx)")

    work = Path(tempfile.mkdtemp(prefix="urr-bench-refusals-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "main", "services/gateway/src", "libs/common/src"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    main_path = f"{work}/services/gateway/src:{work}/libs/common/src"
    processes: list[subprocess.Popen[bytes]] = []
    gateways: list[Gateway] = []
    redis = RedisServer(port=free_port(), workdir=work / "redis")
    try:
        key = SigningKey.generate("bench-access")
        (work / "access.json").write_text(json.dumps(KeySet([key.verification_key()]).to_jwks()))
        legit_token = TokenSigner(key, "urr-auth", "urr", 3600).sign(
            "legit", {"email": "legit@example.com", "role": "user"}
        )
        forged = TokenSigner(SigningKey.generate("bench-access"), "urr-auth", "urr", 3600).sign(
            "victim", {"email": "victim@example.com", "role": "admin"}
        )
        upstream_port = free_port()
        processes.append(
            start_nginx(
                work / "upstream",
                f"""server {{
                    listen 127.0.0.1:{upstream_port} backlog=4096;
                    location = /access.json {{ alias {work}/access.json; }}
                    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
                }}""",
            )
        )
        wait_listening("127.0.0.1", upstream_port, 10, "upstream nginx")
        redis.start()
        upstream = f"http://127.0.0.1:{upstream_port}"
        env = {
            **os.environ,
            "URR_HTTP__USE_UVLOOP": "true",
            "URR_WORKERS": "1",
            "URR_LOG__LEVEL": "ERROR",
            "URR_REDIS__URL": redis.url,
            "URR_UPSTREAMS__AUTH": upstream,
            "URR_UPSTREAMS__QUEUE": upstream,
            "URR_UPSTREAMS__TICKET": upstream,
            "URR_ACCESS_TRUST__JWKS_URL": f"{upstream}/access.json",
            "URR_ENTRY_TRUST__JWKS_URL": f"{upstream}/access.json",
        }
        env.pop("PYTHONPATH", None)
        capacity = verify_capacity(forged, key)
        flood_rate = 3 * capacity
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"machine: {os.cpu_count()} cores, load average {' '.join(load)} (shared)")
        print(f"one ES256 verify: {1e6 / capacity:.0f} µs -> capacity {capacity:.0f}/s per core;")
        print(f"flood for the P99 runs: 3x = {flood_rate:.0f} forged req/s, open loop\n")
        setups = {
            "main": Setup(CATEGORIES, main_path),
            "unshed": Setup(CATEGORIES, env={"URR_SHED__ENABLED": "false"}),
            "unshed-high": Setup(HIGH_CATEGORIES, env={"URR_SHED__ENABLED": "false"}),
            "shed": Setup(CATEGORIES),
            "shed-high": Setup(HIGH_CATEGORIES),
        }
        rows = []
        for variant in variants:
            name = VARIANTS[variant]
            gateway = start_gateway(name, env, setups[variant])
            gateways.append(gateway)
            url = f"http://127.0.0.1:{gateway.port}{PATH}"
            wait_http(url, 60, {"Authorization": f"Bearer {legit_token}"})
            cpu = forged_cpu(gateway, forged, options.cpu_rate, options.seconds)
            time.sleep(2.5)  # the flood's address has its limiter window and budget back
            idle = legit_run(gateway, legit_token, options.legit_rate, options.seconds, None)
            flooded = legit_run(
                gateway, legit_token, options.legit_rate, options.seconds, (forged, flood_rate)
            )
            rows.append((name, cpu, idle, flooded))
            stop(gateway.process)
        print_rows(rows, options)
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"\nload average at the end: {' '.join(load)}")
    finally:
        for gateway in gateways:
            if gateway.process.poll() is None:
                stop(gateway.process)
        for process in processes:
            stop(process)
        redis.stop()


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: a gateway still draining a flood's pipelined requests can take
    longer than its shutdown grace, and the figures are already taken."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


if __name__ == "__main__":
    main()
