"""``python -m urr_loadtests [scenario] [options]``: run one scenario and check its targets.

Starts the local stack when none answers (and then, for the crowds, runs a short warm-up
crowd on an event of its own first: ``--warmup``), runs Locust headless for a bounded time
against loopback, writes CSV, the HTML report, PNG charts and ``summary.json`` under
``artifacts/loadtests/<scenario>-<timestamp>/``, and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from urr_loadtests import admissions, checks, log_audit, report, setup, warmup
from urr_loadtests.stack import Stack, find_or_start

SCENARIOS = ("flash_crowd", "journey", "gateway", "ratelimit_check")
SCENARIO_DIR = Path(__file__).parent / "scenarios"

#: From the design documents. Intended 429s are counted apart and never as errors.
TARGETS = {
    "ratelimit_check": [
        report.Target("check API", "/internal/v1/ratelimit/check", p95_ms=10, p99_ms=20)
    ],
    "gateway": [report.Target("gateway", "/api/v1/events", p95_ms=15)],
    # The canary gate's p95 < 300 ms holds for every route a visitor calls.
    "journey": [report.Target("canary gate", "", p95_ms=300)],
    "flash_crowd": [report.Target("canary gate", "", p95_ms=300)],
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m urr_loadtests", description=__doc__)
    parser.add_argument("scenario", nargs="?", default="flash_crowd", choices=SCENARIOS)
    parser.add_argument("--users", type=int, help="concurrent users (flash_crowd: arrivals)")
    parser.add_argument("--spawn-rate", type=float, help="users started per second")
    parser.add_argument("--run-time", type=int, help="seconds before Locust stops")
    parser.add_argument("--rate", type=float, help="ratelimit_check: calls/s per user")
    parser.add_argument("--capacity", type=int, default=100, help="flash_crowd: Tier-2 capacity")
    parser.add_argument(
        "--admit-per-second", type=float, default=40.0, help="flash_crowd/journey: Tier-2 rate"
    )
    parser.add_argument(
        "--bot-challenge",
        choices=("none", "pow"),
        default="none",
        help="flash_crowd/journey: the event asks every assign for a proof of work",
    )
    parser.add_argument(
        "--pow-bits", type=int, default=16, help="with --bot-challenge pow: the difficulty"
    )
    parser.add_argument(
        "--warmup",
        choices=warmup.MODES,
        default="auto",
        help="flash_crowd/journey: a short crowd on an event of its own before the measured one"
        " (auto: only when this runner started the stack)",
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=warmup.DEFAULT_SECONDS,
        help="seconds of warm-up arrivals",
    )
    parser.add_argument(
        "--warmup-rate",
        type=float,
        help="warm-up arrivals per second (default: half the crowd's, at least 2)",
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/loadtests"))
    parser.add_argument("--no-start", action="store_true", help="fail if no stack is running")
    return parser


#: (users, spawn rate, seconds) when not given.
DEFAULT_SHAPE = {
    # 50 arrivals a second (issue 22) met every crowd check and the canary gate on the 2-core
    # machine in consecutive runs (docs/performance.md, "Flash crowd rate"): the whole stack
    # costs ~45-48 ms of CPU per arrival there, and the line Tier 2 builds (40 admitted a
    # second) spreads it. The last arrival starts at ~100 s; the run ends when every arrival
    # has its outcome, the rest is a bound for a slower machine.
    "flash_crowd": (5000, 50.0, 300),
    # Logins are anonymous, so AUTH's 20/min counts per client address: every Locust user
    # shares 127.0.0.1, and 4 looping visitors stay under it.
    "journey": (4, 1.0, 60),
    "gateway": (40, 10.0, 30),
    "ratelimit_check": (10, 10.0, 30),
}


class Sampler(threading.Thread):
    """Reads the queue's figures every second and the waiting room's every two."""

    def __init__(self, stack: Stack, token: str, event_id: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.token, self.event_id = stack, token, event_id
        self.samples: list[dict[str, float]] = []
        self.errors: list[str] = []
        #: Set when Tier 1 stopped answering: the run is stopped early rather than let a
        #: backlog grow without bound in the local Lambda emulator and moto.
        self.overloaded = threading.Event()
        self._tier1_misses = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        ticks = 0
        while not self.stopping.wait(0.5):
            sample: dict[str, float] = {"t": time.time()}
            # Once a second: the admin is a user like any other to the gateway, and its
            # general limit (100 a minute) refused about one read in six at twice a second.
            if ticks % 2 == 0:
                try:
                    self._sample_tier2(sample)
                except OSError as exc:  # a slow or refused answer is a gap in the chart
                    self.errors.append(f"queue: {exc!r}")
            # Tier 1 answers from the (busy) Lambda emulator: asked less often.
            if ticks % 4 == 0:
                self._sample_tier1(sample)
            ticks += 1
            self.samples.append(sample)

    def _sample_tier2(self, sample: dict[str, float]) -> None:
        """The queue's own count of admitted sessions, read as an operator reads it: through
        the gateway with an admin's access token (the queue believes no role header)."""
        for _ in range(2):
            status, answer = setup.http(
                "GET",
                f"{self.stack.url('gateway')}/api/v1/admin/queue/{self.event_id}",
                headers={"authorization": f"Bearer {self.token}"},
                timeout=5,
            )
            if status != 401:
                break
            self.token = setup.admin_token(self.stack)  # expired during a long run
        if status == 200:
            sample["tier2_waiting"] = answer["live"]["waiting"]
            sample["tier2_admitted"] = answer["live"]["admitted"]
        elif len(self.errors) < 100:
            self.errors.append(f"queue: {status} {str(answer)[:120]}")

    def _sample_tier1(self, sample: dict[str, float]) -> None:
        try:
            status, answer = setup.http(
                # Through the edge: the Tier-1 API answers only calls carrying its origin secret.
                "GET",
                f"{self.stack.url('vwr-edge')}/vwr-api/vwr/status/{self.event_id}",
                timeout=5,
            )
        except OSError as exc:
            self.errors.append(f"tier1: {exc!r}")
            self._tier1_miss()
            return
        if status == 429:
            return  # throttled like any visitor: busy, not gone
        if status != 200:
            self._tier1_miss()
            return
        sample["tier1_waiting"] = answer.get("waiting", 0)
        sample["served"] = answer.get("servingCounter", 0)
        self._tier1_misses = 0

    def _tier1_miss(self) -> None:
        self._tier1_misses += 1
        if self._tier1_misses >= ABORT_AFTER_TIER1_MISSES:
            self.overloaded.set()


#: A run is stopped once this many requests failed and they are this share of all: past that
#: point the local stand-ins (the Lambda emulator on moto) only grow a backlog and memory.
ABORT_FAILURES = 500
ABORT_FAILURE_SHARE = 0.2


def _overload(prefix: Path) -> str:
    """Why the run should stop now, from Locust's live history file, or ``""``."""
    try:
        lines = Path(f"{prefix}_stats_history.csv").read_text().splitlines()
    except OSError:
        return ""
    if len(lines) < 2:
        return ""
    header = lines[0].split(",")
    for line in reversed(lines[1:]):
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("Name") != "Aggregated":
            continue
        total = int(float(row.get("Total Request Count") or 0))
        failed = int(float(row.get("Total Failure Count") or 0))
        if failed >= ABORT_FAILURES and failed >= ABORT_FAILURE_SHARE * total:
            return f"stopped early: {failed} of {total} requests failed"
        return ""
    return ""


#: Consecutive unanswered Tier-1 status reads (one every 2 s, 5 s timeout each) that stop
#: the run: Tier 1 has fallen behind for good.
ABORT_AFTER_TIER1_MISSES = 5


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGINT (Locust writes its reports), then SIGTERM, then SIGKILL: 5,000 users blocked in
    30-second requests can keep Locust from honouring the first signal for minutes."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


#: Locust users that play the crowd's arrivals: at least this many. With a Locust user per
#: arrival, Locust's own CPU rose through the run and every request measured about 8 ms more
#: (the static waiting page's P50 went from 1 to 10 ms).
CROWD_POOL = 1500
#: ... and enough for every arrival started in this many seconds to still be in the system: at
#: 50/s with Tier 2 admitting 40/s the line grows, and 1,500 users were all busy for the last
#: fifth of the crowd, whose arrivals then started at 30-40/s instead of 50.
CROWD_POOL_SECONDS = 60


def crowd_pool(arrivals: int, rate: float) -> int:
    """Locust users for a crowd of ``arrivals`` at ``rate`` a second."""
    return min(arrivals, max(CROWD_POOL, math.ceil(rate * CROWD_POOL_SECONDS)))


#: Locust's environment unless the caller's says otherwise. Every crowd arrival opens a new
#: connection, and gevent's default resolver hands each lookup of the host (a loopback
#: address) to a thread pool: ~6 % of Locust's CPU in a 20/s crowd (py-spy). The blocking
#: resolver answers an address or an /etc/hosts name at once; load tests run on loopback.
LOCUST_ENV = {"GEVENT_RESOLVER": "block"}


def run_locust(
    scenario: str,
    host: str,
    out: Path,
    users: int,
    spawn: float,
    seconds: int,
    env: dict[str, str],
    stop_early: threading.Event | None = None,
) -> int:
    prefix = out / scenario
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(SCENARIO_DIR / f"{scenario}.py"),
        "--headless",
        "--host",
        host,
        "-u",
        str(users),
        "-r",
        str(spawn),
        "-t",
        f"{seconds}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--html",
        str(out / "report.html"),
        "--only-summary",
        "--loglevel",
        "WARNING",
        *(
            # Figures from the moment every user runs: the ramp is not the steady state.
            ["--reset-stats"] if scenario in ("gateway", "ratelimit_check") else []
        ),
        "--exit-code-on-error",
        "0",
    ]
    with open(out / "locust.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(  # noqa: S603 - locust from this environment
            command, env={**LOCUST_ENV, **os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        while process.poll() is None:
            # Checked every 2 s; a run that ends is seen at once (not up to 2 s later).
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=2)
            if process.returncode is not None:
                break
            reason = _overload(prefix) or (
                "Tier 1 stopped answering the sampler"
                if stop_early is not None and stop_early.is_set()
                else ""
            )
            if reason:
                # Locust stops its users and still writes every report on SIGINT.
                (out / "stopped-early.txt").write_text(reason + "\n")
                _stop(process)
                break
    return process.returncode


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    scenario = args.scenario
    users, spawn, seconds = DEFAULT_SHAPE[scenario]
    users = args.users or users
    spawn = args.spawn_rate or spawn
    seconds = args.run_time or seconds
    repo_root = Path.cwd()
    out = args.out / f"{scenario}-{time.strftime('%Y%m%dT%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"urr-loadtest: {scenario}, {users} users, {seconds} s, output in {out}", flush=True)
    stack = find_or_start(repo_root, start=not args.no_start)
    try:
        warmed = None
        if scenario in ("journey", "flash_crowd") and warmup.wanted(
            args.warmup, started_stack=stack.process is not None
        ):
            warmed = _warm_up(stack, setup.admin_token(stack), out, args, spawn)
        summary, missed = _run(stack, scenario, args, out, users, spawn, seconds)
        if warmed is not None:
            summary["warmup"] = warmed
    finally:
        stack.stop()
    summary["targets_missed"] = missed
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str), flush=True)
    print(f"urr-loadtest: {'FAILED' if missed else 'passed'}; report in {out}", flush=True)
    return 1 if missed else 0


def _run(
    stack: Stack,
    scenario: str,
    args: argparse.Namespace,
    out: Path,
    users: int,
    spawn: float,
    seconds: int,
) -> tuple[dict[str, Any], list[str]]:
    env = {"URR_LT_AUTH_URL": stack.url("auth")}
    host = stack.url("gateway")
    token = setup.admin_token(stack)
    event_id = ""
    spare: list[tuple[str, str]] = []
    if scenario == "gateway":
        tokens = out / "access-tokens.txt"
        setup.register_users(stack, users, tokens)
        env["URR_LT_TOKENS"] = str(tokens)
    if scenario == "ratelimit_check":
        host = stack.url("gateway-internal")
        # The check API needs a caller's credential: the devstack's one for load tests.
        env["URR_LT_CHECK_SECRET"] = stack.secret("gateway-check-loadtest")
        if args.rate:
            env["URR_LT_CHECK_RATE"] = str(args.rate)
    elif scenario in ("journey", "flash_crowd"):
        host = stack.url("vwr-edge")
        event_id = f"lt{uuid.uuid4().hex[:10]}"
        _open_event(stack, token, event_id, args)
        env["URR_LT_EVENT"] = event_id
        env["URR_LT_RESULTS"] = str(out / "arrivals.jsonl")
        env["URR_LT_ARRIVAL_DEADLINE_S"] = str(max(seconds - 15, 30))
        if scenario == "flash_crowd":
            state_dir = Path(os.environ.get("URR_DEVSTACK__STATE_DIR", ".urr"))
            tokens = out / "access-tokens.txt"
            setup.issue_access_tokens(state_dir, users, tokens)
            env["URR_LT_TOKENS"] = str(tokens)
            env["URR_LT_SPAWN_RATE"] = str(spawn)
            # Four more users no arrival is, for the forged and replayed token probes.
            spare_file = out / "probe-tokens.txt"
            setup.issue_access_tokens(state_dir, 4, spare_file)
            spare = [tuple(line.split()) for line in spare_file.read_text().splitlines()]  # type: ignore[misc]
    sampler = Sampler(stack, token, event_id) if event_id else None
    if sampler:
        sampler.start()
    started = time.time()
    # A crowd's Locust users are a pool that takes the arrivals in turn (flash_crowd.py).
    locust_users = crowd_pool(users, spawn) if scenario == "flash_crowd" else users
    code = run_locust(
        scenario,
        host,
        out,
        locust_users,
        spawn,
        seconds,
        env,
        sampler.overloaded if sampler else None,
    )
    if sampler:
        sampler.stopping.set()
        sampler.join()
    summary: dict[str, Any] = {
        "scenario": scenario,
        "users": users,
        "run_time_s": round(time.time() - started, 1),
        "locust_exit_code": code,
    }
    missed: list[str] = []
    if sampler and sampler.overloaded.is_set():
        missed.append("stopped early: Tier 1 (the local Lambda emulator on moto) stopped answering")
        summary["stopped_early"] = True
    if code != 0:
        missed.append(f"locust exited {code} (see locust.log)")
    stats = report.read_stats(out / scenario)
    summary["routes"] = [
        {
            "route": s.name,
            "requests": s.requests,
            "failures": s.failures,
            "p50_ms": s.p50_ms,
            "p95_ms": s.p95_ms,
            "p99_ms": s.p99_ms,
        }
        for s in stats
    ]
    missed += report.check_targets(stats, TARGETS[scenario])
    report.chart_history(out / scenario, out)
    if sampler:
        report.chart_queue(sampler.samples, out, args.capacity)
        with open(out / "queue_samples.json", "w", encoding="utf-8") as handle:
            json.dump(sampler.samples, handle)
    if event_id:
        missed += _crowd_checks(
            stack, scenario, event_id, out, summary, sampler, spare, args, spawn
        )
        summary["room"] = setup.deactivate_room(stack, token, event_id)
    return summary, missed


def _open_event(stack: Stack, token: str, event_id: str, args: argparse.Namespace) -> None:
    """A new event with its seats and Tier-2 queue, its waiting room open at the edge."""
    setup.seed_event(
        stack, event_id, capacity=args.capacity, admit_per_second=args.admit_per_second
    )
    pow_bits = args.pow_bits if args.bot_challenge == "pow" else None
    setup.activate_room(stack, token, event_id, pow_bits=pow_bits)
    setup.wait_for_edge_gate(stack, event_id)


def _warm_up(
    stack: Stack,
    token: str,
    out: Path,
    args: argparse.Namespace,
    crowd_rate: float,
) -> dict[str, Any]:
    """A short flash crowd on an event of its own, run to its end before the measured one
    (``urr_loadtests.warmup``); its files go to ``<out>/warmup/``, never into the crowd's."""
    chosen = warmup.plan(crowd_rate, seconds=args.warmup_seconds, rate=args.warmup_rate)
    warm_out = out / "warmup"
    warm_out.mkdir(parents=True, exist_ok=True)
    event_id = warmup.warm_event_id(f"lt{uuid.uuid4().hex[:10]}")
    print(
        f"urr-loadtest: warm-up, {chosen.arrivals} arrivals at {chosen.rate:g}/s on {event_id}",
        flush=True,
    )
    _open_event(stack, token, event_id, args)
    state_dir = Path(os.environ.get("URR_DEVSTACK__STATE_DIR", ".urr"))
    tokens = warm_out / "access-tokens.txt"
    setup.issue_access_tokens(state_dir, chosen.arrivals, tokens)
    env = {
        "URR_LT_AUTH_URL": stack.url("auth"),
        "URR_LT_EVENT": event_id,
        "URR_LT_RESULTS": str(warm_out / "arrivals.jsonl"),
        "URR_LT_ARRIVAL_DEADLINE_S": str(max(chosen.run_time_s - 15, 30)),
        "URR_LT_TOKENS": str(tokens),
        "URR_LT_SPAWN_RATE": str(chosen.rate),
    }
    started = time.time()
    # The crowd's own scenario file, whatever the measured scenario: every route, in order.
    code = run_locust(
        "flash_crowd",
        stack.url("vwr-edge"),
        warm_out,
        min(chosen.arrivals, CROWD_POOL),
        chosen.rate,
        chosen.run_time_s,
        env,
    )
    done = warmup.summarise(
        event_id,
        chosen,
        checks.read_arrivals(warm_out / "arrivals.jsonl"),
        report.read_stats(warm_out / "flash_crowd"),
        time.time() - started,
        code,
    )
    # Its room closed: the scheduler and the edge stop working on it before the crowd.
    done["room"] = setup.deactivate_room(stack, token, event_id)
    print(f"urr-loadtest: warm-up done: {json.dumps(done, default=str)}", flush=True)
    return done


def _crowd_checks(
    stack: Stack,
    scenario: str,
    event_id: str,
    out: Path,
    summary: dict[str, Any],
    sampler: Sampler | None,
    spare: list[tuple[str, str]],
    args: argparse.Namespace,
    asked_rate: float,
) -> list[str]:
    """Seats, answers, order, capacity and the admission log audit (journey and flash crowd);
    token probes and the arrival rate really run (crowd)."""
    arrivals = checks.read_arrivals(out / "arrivals.jsonl")
    seats = checks.seat_figures(stack, event_id)
    try:
        rank = admissions.admissions(stack.url("kafka"), event_id)
    except (TimeoutError, OSError) as exc:  # a broker too busy to read back is said, not fatal
        rank = {}
        summary["admissions_unread"] = repr(exc)
    crowd, missed = checks.summarise_crowd(
        arrivals, seats, sampler.samples if sampler else [], args.capacity, rank
    )
    summary["event_id"] = event_id
    summary["crowd"] = crowd
    if scenario == "flash_crowd":
        summary["arrival_rate"], rate_missed = checks.arrival_rate_figures(arrivals, asked_rate)
        missed += rate_missed
    # Issue 19: the same admissions as the public sees them, audited by urr-verify.
    summary["log_audit"], log_missed = log_audit.audit_event(
        stack.url("gateway"), event_id, out / "log", expected=len(rank)
    )
    missed += log_missed
    if args.bot_challenge == "pow":
        summary["proof_of_work"] = checks.pow_figures(arrivals, args.pow_bits)
        missed += checks.pow_missed(summary["proof_of_work"])
    if sampler and sampler.errors:
        summary["sampler_errors"] = sampler.errors[:5]
    if scenario == "flash_crowd":
        probes, probe_missed = checks.forged_and_replayed(stack, event_id, arrivals, spare)
        summary["token_probes"] = probes
        missed += probe_missed
        expected = args.users or DEFAULT_SHAPE[scenario][0]
        if len(arrivals) < expected:
            missed.append(f"only {len(arrivals)} of {expected} arrivals finished in time")
    return missed


if __name__ == "__main__":
    sys.exit(main())
