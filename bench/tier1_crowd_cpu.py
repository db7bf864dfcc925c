"""CPU per arrival of Tier 1 alone: the Lambda emulator (4 containers) and dynalite (issue 22).

    make dynalite && uv run --frozen python bench/tier1_crowd_cpu.py \
        [--arrivals 1200] [--rate 40] [--admit-rate R] [--rounds 2] [--before <git rev>] \
        [--pyspy DIR] [--first-checks capped,advice] [--logged-in] [--count-calls]

A crowd as the flash-crowd load test sends it to Tier 1, without the rest of the stack: each
arrival takes a place (``POST /vwr/assign``, anonymous, a fresh request id) and checks (``GET
/vwr/check``) as ``pollAfterSeconds`` says, the first time included (at most
30 s, +-20 %, as the waiting page and the Locust flow do) until it is let in; a thread plays the
advancer (the serving counter moves to the last number every second, a compare-and-set as the
real one makes). ``--admit-rate R`` lets in R a second at most instead, and stores R as the
measured rate the ETA uses: a crowd faster than R builds a line, as the flash crowd does behind
Tier 2's admission rate; then the checks per arrival and the ``lag`` (seconds from the counter
passing a place to its holder's check that learns it) say what the waiting room's poll advice
costs and how late it lets people know. Each run starts a fresh dynalite and a fresh emulator
(``python -m urr_vwr_lambda.local.apigw``, 4 spawned containers as the devstack runs it) on free
ports. ``--before REV`` runs the same crowd on that revision's ``urr_vwr_lambda`` (exported with
``git archive`` and put first on ``PYTHONPATH``, so the containers import it too) alternately
with the working tree's, in one run: compare within a run only, the machine is shared.

``--logged-in``: every arrival carries an access token (the ``access_token`` cookie, signed
with a key the emulator trusts), as the flash crowd's arrivals do, so each assign takes the
logged-in path (the user's claim); without it the assigns are anonymous. ``--count-calls``: the
emulator's DynamoDB traffic goes through a counting relay in this process (not measured: its
CPU is the bench's), and the calls per arrival are printed by operation.

Printed per run: CPU ms per arrival of the emulator with its containers (and of the
emulator's own process alone) and of dynalite (from /proc, user + system), the emulator's CPU
per invocation, invocations and checks per arrival, latency P50/P95 of assign and check as the
client saw them, 429s, the lag's mean and P95, and the load average at the start and end of the
run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from urr_devstack.procs import dynalite_server, free_port
from urr_vwr_lambda.settings import TableSettings
from urr_vwr_lambda.store import StaleCounter, VwrStore
from urr_vwr_lambda.tables import ensure_tables

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
EVENT = "bench-crowd"


def cpu_s(pid: int, *, children: bool = True) -> float:
    """User + system seconds of ``pid`` and (``children``) of every live descendant (the
    containers)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(entry.name) == pid or (children and _descends(int(entry.name), pid)):
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _descends(child: int, ancestor: int) -> bool:
    seen = 0
    while child > 1 and seen < 16:
        try:
            text = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            return False
        child = int(text[text.rindex(")") + 2 :].split()[1])
        if child == ancestor:
            return True
        seen += 1
    return False


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Tally:
    assign_ms: list[float] = field(default_factory=list)
    check_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    admitted: int = 0
    #: (position, time.monotonic() of the check that said admitted) per admitted arrival.
    learned: list[tuple[int, float]] = field(default_factory=list)

    def count(self, what: str, status: int) -> None:
        key = f"{what} {status}"
        self.statuses[key] = self.statuses.get(key, 0) + 1


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def arrival(
    session: aiohttp.ClientSession,
    base: str,
    tally: Tally,
    first_cap_s: float | None,
    token: str | None = None,
) -> None:
    request_id = str(uuid.uuid4())
    # The crowd's browsers send the login cookie on every request, checks included.
    headers = {"Cookie": f"access_token={token}"} if token else {}
    for _ in range(20):
        started = time.perf_counter()
        async with session.post(
            f"{base}/vwr/assign/{EVENT}", json={"requestId": request_id}, headers=headers
        ) as answer:
            body = await answer.json(content_type=None)
            status = answer.status
        tally.count("assign", status)
        if status in (200, 201):
            tally.assign_ms.append((time.perf_counter() - started) * 1000)
            break
        await asyncio.sleep(2 * random.uniform(0.8, 1.2))
    else:
        return
    position = int(body["position"])
    # As the waiting page: each check when the room says; ``first_cap_s`` plays the page
    # before issue 22's last pass, whose first check came after at most 2 s.
    wait = float(body.get("pollAfterSeconds") or 2)
    if first_cap_s is not None:
        wait = min(wait, first_cap_s)
    for _ in range(200):
        await asyncio.sleep(min(max(wait, 0.5), MAX_POLL_S) * random.uniform(0.8, 1.2))
        started = time.perf_counter()
        async with session.get(f"{base}/vwr/check/{EVENT}/{request_id}", headers=headers) as answer:
            body = await answer.json(content_type=None)
            status = answer.status
        tally.count("check", status)
        if status != 200:
            wait = 2.0
            continue
        tally.check_ms.append((time.perf_counter() - started) * 1000)
        if body.get("admitted"):
            tally.admitted += 1
            tally.learned.append((position, time.monotonic()))
            return
        wait = float(body.get("pollAfterSeconds") or 2)


#: Which first pause a run's clients take (``--first-checks``): ``capped`` at 2 s or the advice.
FIRST_CHECK_ENV = "URR_BENCH_FIRST_CHECK"

#: The Locust flow's and the waiting page's longest pause between checks.
MAX_POLL_S = 30.0


async def crowd(
    base: str,
    arrivals: int,
    rate: float,
    first_cap_s: float | None,
    tokens: list[str] | None = None,
) -> Tally:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        started = time.monotonic()
        for n in range(arrivals):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            token = tokens[n] if tokens else None
            tasks.append(asyncio.create_task(arrival(session, base, tally, first_cap_s, token)))
        await asyncio.gather(*tasks)
    return tally


def advancer(
    store: VwrStore,
    stop: threading.Event,
    admit_rate: float | None = None,
    moves: list[tuple[int, float]] | None = None,
) -> None:
    """The counter advancer's effect: every number handed out is let in a second later, or
    (``admit_rate``) at most that many a second, the rate stored for the ETA. Each move is
    appended to ``moves`` as (new counter, ``time.monotonic()``)."""
    allowance = 0.0
    while not stop.wait(1.0):
        state = store.get_event(EVENT, consistent=True)
        if state is None or state.next_position <= state.serving_counter:
            allowance = 0.0  # nobody waits: an idle second is not saved up
            continue
        target = state.next_position
        if admit_rate is not None:
            allowance += admit_rate
            target = min(target, state.serving_counter + int(allowance))
            allowance -= target - state.serving_counter
        with contextlib.suppress(StaleCounter):
            store.advance_to(state, serving_counter=target, admit_rate=admit_rate, now_ms=_ms())
            if moves is not None:
                moves.append((target, time.monotonic()))


def lags(moves: list[tuple[int, float]], learned: list[tuple[int, float]]) -> list[float]:
    """Seconds from the move that let each place in to the check that told its holder."""
    counters = [counter for counter, _ in moves]
    out = []
    for position, told_at in learned:
        index = bisect.bisect_left(counters, position)
        if index < len(moves):
            out.append(max(0.0, told_at - moves[index][1]))
    return out


def _ms() -> int:
    return int(time.time() * 1000)


def dynalite_client(endpoint: str, **config: Any) -> Any:
    """A boto3 DynamoDB client of dynalite at ``endpoint`` (standard retries, as the
    function's; ``config``: more ``botocore.config.Config`` options)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - dynalite takes any
        config=Config(retries={"mode": "standard", "max_attempts": 3}, **config),
    )


def wait_ready(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def function_env(endpoint: str, keys: Path) -> dict[str, str]:
    """The emulator's variables for dynalite at ``endpoint`` and the key pair under ``keys``."""
    return {
        "URR_AWS__ENDPOINT_URL": endpoint,
        "URR_AWS__REGION": "us-east-1",
        "URR_AWS__ACCESS_KEY_ID": "bench",
        "URR_AWS__SECRET_ACCESS_KEY": "bench",
        "URR_VWR_TOKENS__PRIVATE_KEY_FILE": str(keys / "local-1.pem"),
        "URR_VWR_TRUST__PUBLIC_KEY_FILES": json.dumps([str(keys / "public" / "local-1.pem")]),
    }


class CallCounter:
    """A TCP relay in front of dynalite that counts the DynamoDB operations passing through
    (by the ``X-Amz-Target`` header of each request), on its own thread and event loop."""

    MARK = b"X-Amz-Target: DynamoDB_20120810."

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.counts: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(
            asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        )
        self._ready.set()
        self._loop.run_forever()

    def _count(self, data: bytes) -> None:
        start = data.find(self.MARK)
        while start >= 0:
            end = data.find(b"\r\n", start)
            name = data[start + len(self.MARK) : end].decode("ascii", "replace")
            self.counts[name] = self.counts.get(name, 0) + 1
            start = data.find(self.MARK, end)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, count: bool
        ) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    if count:
                        self._count(data)
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


def access_tokens(work: Path, count: int) -> tuple[list[str], Path]:
    """``count`` access tokens of fresh users, as the flash crowd's runner issues them, and
    the public key file that verifies them."""
    from urr_common.tokens import SigningKey, TokenSigner

    key = SigningKey.generate("bench-auth")
    public = work / "access" / "bench-auth.pem"
    public.parent.mkdir(parents=True, exist_ok=True)
    public.write_bytes(key.verification_key().to_pem())
    signer = TokenSigner(key, issuer="urr-auth", audience="urr", ttl_s=3600)
    tokens = [signer.sign(str(uuid.uuid4()), {"role": "user"}) for _ in range(count)]
    return tokens, public


def run_once(
    label: str, src: Path | None, extra_env: dict[str, str], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    dyn_port, api_port, metrics_port = free_port(), free_port(), free_port()
    dynalite = dynalite_server(dyn_port, work / f"dynalite-{label}.log")
    dynalite.start()
    endpoint = f"http://127.0.0.1:{dyn_port}"
    counter = CallCounter(dyn_port) if args.count_calls else None
    function_endpoint = f"http://127.0.0.1:{counter.port}" if counter else endpoint
    keys = work / "keys"
    tokens: list[str] | None = None
    access_env: dict[str, str] = {}
    if args.logged_in:
        tokens, public = access_tokens(work, args.arrivals)
        access_env = {
            "URR_ACCESS_TRUST__PUBLIC_KEY_FILES": json.dumps([str(public)]),
            "URR_ACCESS_TRUST__ISSUER": "urr-auth",
            "URR_ACCESS_TRUST__AUDIENCE": "urr",
        }
    env = {
        **os.environ,
        "URR_ENVIRONMENT": "local",
        "URR_HTTP__PORT": str(api_port),
        "URR_METRICS__PORT": str(metrics_port),
        **function_env(function_endpoint, keys),
        **access_env,
        "URR_EDGE_CONFIG__TARGET": str(work / f"edge-{label}.json"),
        "URR_LOG__LEVEL": "WARNING",
        **extra_env,
    }
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    client = dynalite_client(endpoint)
    ensure_tables(client, TableSettings())
    store = VwrStore(client, counters_table="counters", positions_table="positions")
    store.put_event(EVENT, is_active=True, batch_size=500, now_ms=_ms())
    # The whole crowd comes from one address: no per-address cap (as the load test sets it).
    client.update_item(
        TableName="counters",
        Key={"eventId": {"S": EVENT}},
        UpdateExpression="SET placesPerClient = :zero",
        ExpressionAttributeValues={":zero": {"N": "0"}},
    )
    log = (work / f"apigw-{label}.log").open("wb")
    emulator = subprocess.Popen(
        [sys.executable, "-m", "urr_vwr_lambda.local.apigw"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    stop = threading.Event()
    spy: subprocess.Popen[bytes] | None = None
    try:
        wait_ready(f"http://127.0.0.1:{api_port}/health/ready")
        time.sleep(1.0)
        emu0, dyn0 = cpu_s(emulator.pid), cpu_s(dynalite.pid or 0)
        own0 = cpu_s(emulator.pid, children=False)
        calls0 = counter.snapshot() if counter else {}
        load0 = loadavg()
        if args.pyspy:
            out = Path(args.pyspy) / f"{label}.txt"
            spy = subprocess.Popen(  # noqa: S603 - py-spy from the venv's PATH
                [
                    shutil.which("py-spy") or "py-spy",
                    "record",
                    "--pid",
                    str(emulator.pid),
                    "--subprocesses",
                    "-r",
                    "200",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        moves: list[tuple[int, float]] = []
        mover = threading.Thread(
            target=advancer, args=(store, stop, args.admit_rate, moves), daemon=True
        )
        mover.start()
        wall0 = time.monotonic()
        first_cap_s = 2.0 if extra_env.get(FIRST_CHECK_ENV) == "capped" else None
        tally = asyncio.run(
            crowd(f"http://127.0.0.1:{api_port}", args.arrivals, args.rate, first_cap_s, tokens)
        )
        wall = time.monotonic() - wall0
        emu1, dyn1 = cpu_s(emulator.pid), cpu_s(dynalite.pid or 0)
        own1 = cpu_s(emulator.pid, children=False)
        calls1 = counter.snapshot() if counter else {}
    finally:
        stop.set()
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        emulator.terminate()
        emulator.wait(30)
        log.close()
        dynalite.stop()
    invocations = sum(v for k, v in tally.statuses.items())
    n = args.arrivals
    late = lags(moves, tally.learned)
    return {
        "label": label,
        "emu_ms": (emu1 - emu0) / n * 1000,
        "emu_self_ms": (own1 - own0) / n * 1000,
        "dyn_ms": (dyn1 - dyn0) / n * 1000,
        "emu_per_call_ms": (emu1 - emu0) / max(1, invocations) * 1000,
        "calls_per_arrival": invocations / n,
        "assign_p50": statistics.median(tally.assign_ms) if tally.assign_ms else float("nan"),
        "assign_p95": pct(tally.assign_ms, 0.95),
        "check_p50": statistics.median(tally.check_ms) if tally.check_ms else float("nan"),
        "check_p95": pct(tally.check_ms, 0.95),
        "admitted": tally.admitted,
        "checks_per_arrival": sum(v for k, v in tally.statuses.items() if k.startswith("check"))
        / n,
        "lag_mean_s": statistics.fmean(late) if late else float("nan"),
        "lag_p95_s": pct(late, 0.95),
        "statuses": tally.statuses,
        "wall_s": wall,
        "load": f"{load0} -> {loadavg()}",
        # DynamoDB calls per arrival by operation (``--count-calls``), the advancer's excluded.
        "dynamodb_per_arrival": {
            op: round((calls1.get(op, 0) - calls0.get(op, 0)) / n, 3)
            for op in sorted(calls1)
            if calls1.get(op, 0) > calls0.get(op, 0)
        },
    }


def export_revision(rev: str, into: Path, folder: str = "services/vwr_lambda/src") -> Path:
    """``folder`` (a package's ``src``, ``urr_vwr_lambda``'s unless told) of ``rev`` under
    ``into``; the exported folder."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(  # noqa: S603 - git with our own argv
        [shutil.which("git") or "git", "-C", str(REPO), "archive", rev, folder],
        check=True,
        capture_output=True,
    )
    tar = [shutil.which("tar") or "tar", "-x", "-C", str(into)]
    subprocess.run(tar, input=archive.stdout, check=True)  # noqa: S603 - our own argv
    return into / folder


def alternate(
    before: str | None,
    rounds: int,
    work: Path,
    run: Callable[[str, Path | None, dict[str, str]], dict[str, Any]],
    clients: str | None = None,
    first_checks: str | None = None,
) -> list[dict[str, Any]]:
    """``run(label, src, env)`` for the working tree and, with ``before``, that revision's
    ``urr_vwr_lambda`` (``src``), alternating which goes first each round; with ``clients``
    (``"botocore,lean"``) the working tree once per ``URR_DYNAMODB_CLIENT`` value instead
    (``env``); with ``first_checks`` (``"capped,advice"``) the working tree once per client
    first pause. Each result is printed as a JSON line as it comes."""
    variants: list[tuple[str, Path | None, dict[str, str]]] = [("after", None, {})]
    if first_checks:
        variants = [(name, None, {FIRST_CHECK_ENV: name}) for name in first_checks.split(",")]
    elif clients:
        variants = [(name, None, {"URR_DYNAMODB_CLIENT": name}) for name in clients.split(",")]
    elif before:
        variants.insert(0, ("before", export_revision(before, work / "before"), {}))
    results = []
    for round_no in range(rounds):
        order = variants if round_no % 2 == 0 else list(reversed(variants))
        for name, src, env in order:
            result = run(f"{name}-{round_no}", src, env)
            results.append(result)
            print(json.dumps(result), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arrivals", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument(
        "--admit-rate", type=float, help="let in at most this many a second (a line builds)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="a git revision to compare with, alternately")
    parser.add_argument("--pyspy", help="folder for py-spy raw profiles of each run")
    parser.add_argument(
        "--logged-in", action="store_true", help="arrivals carry an access token (the crowd's)"
    )
    parser.add_argument(
        "--count-calls", action="store_true", help="count the emulator's DynamoDB calls"
    )
    parser.add_argument(
        "--clients", help="compare URR_DYNAMODB_CLIENT values instead, e.g. botocore,lean"
    )
    parser.add_argument(
        "--first-checks",
        help="compare the clients' first pause instead: capped,advice (2 s at most, or as told)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tier1-crowd-") as tmp:
        work = Path(tmp)
        from urr_vwr_lambda.keys import ensure_local_keys
        from urr_vwr_lambda.settings import VwrTokenSettings

        ensure_local_keys(VwrTokenSettings(private_key_file=work / "keys" / "local-1.pem"))
        results = alternate(
            args.before,
            args.rounds,
            work,
            lambda label, src, env: run_once(label, src, env, args, work),
            args.clients,
            args.first_checks,
        )
    print(
        f"\n{args.arrivals} arrivals at {args.rate}/s"
        + (f", {args.admit_rate} let in a second" if args.admit_rate else "")
        + "; CPU ms per arrival (emulator with its containers, dynalite), per invocation, "
        "calls and checks per arrival, latency ms, lag s (mean/P95)"
    )
    print(
        f"{'run':<10} {'emu/arr':>8} {'(self)':>7} {'dyn/arr':>8} {'emu/call':>9} {'calls':>6} "
        f"{'checks':>6} {'assign p50/p95':>15} {'check p50/p95':>14} {'429s':>5} "
        f"{'lag':>9}  load"
    )
    for r in results:
        throttled = sum(v for k, v in r["statuses"].items() if k.endswith(" 429"))
        print(
            f"{r['label']:<10} {r['emu_ms']:8.2f} {r['emu_self_ms']:7.2f} {r['dyn_ms']:8.2f} "
            f"{r['emu_per_call_ms']:9.2f} "
            f"{r['calls_per_arrival']:6.2f} {r['checks_per_arrival']:6.2f} "
            f"{r['assign_p50']:7.1f}/{r['assign_p95']:<7.1f} "
            f"{r['check_p50']:6.1f}/{r['check_p95']:<7.1f} {throttled:5d} "
            f"{r['lag_mean_s']:4.1f}/{r['lag_p95_s']:<4.1f}  {r['load']}"
        )
        if r["dynamodb_per_arrival"]:
            calls = ", ".join(f"{op} {k:.2f}" for op, k in r["dynamodb_per_arrival"].items())
            total = sum(r["dynamodb_per_arrival"].values())
            print(f"{'':<10} DynamoDB calls per arrival {total:.2f}: {calls}")


if __name__ == "__main__":
    main()
