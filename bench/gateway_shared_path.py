"""CPU per request of the gateway's shared code alone, this tree beside another revision.

The code both servers run (aiohttp's and the protocol-level one): request id, log context,
metrics, ingress, every filter step, ``UpstreamProxy.open``, reading the answer, its headers
and rendering (``ProxiedRoutes.answer`` of ``bench/gateway_protocol_prototype.py``), driven
in one process by ``--concurrency`` callers against a real upstream (nginx ``return 200``)
and a real Redis, with the same settings, tokens and seat route as ``gateway_proxy.py``. No
HTTP server and no client run in the measured process, so its CPU time per request is the
shared code plus its own socket writes to the upstream and Redis. On a machine shared with
other work (wrk runs of a whole server vary by 20 % from one run to the next there) this is
the steadier before/after figure: each revision runs in its own process, alternately,
``--rounds`` times, three measurements each; the table gives min and median. Usage::

    uv run python bench/gateway_shared_path.py [--before main] [--rounds 3]
        [--concurrency 64] [--requests 3000]
"""

# ruff: noqa: S603, S607 - a benchmark script running fixed tools (git, tar, nginx)
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(concurrency: int, requests: int, repeats: int) -> None:
    """In the child: build the app as ``python -m urr_gateway`` does, then time answers."""
    from aiohttp import web
    from multidict import CIMultiDict, CIMultiDictProxy

    sys.path.insert(0, str(HERE))
    import gateway_protocol_prototype as prototype

    from urr_common.service import HTTP_METRICS_KEY, run
    from urr_common.settings import load_settings
    from urr_gateway.app import PIPELINE_KEY, PROXY_KEY
    from urr_gateway.server import build_apps
    from urr_gateway.settings import GatewaySettings

    settings = load_settings(GatewaySettings)
    sent = json.loads(os.environ["SHARED_PATH_HEADERS"])
    headers = CIMultiDictProxy(
        CIMultiDict({"Host": "127.0.0.1:3001", "User-Agent": "wrk", "Accept": "*/*", **sent})
    )

    async def main() -> None:
        apps = build_apps(settings)
        runner = web.AppRunner(apps.public, handle_signals=False, access_log=None)
        await runner.setup()
        pipeline = apps.public[PIPELINE_KEY]
        assert pipeline.steps is not None
        routes = prototype.ProxiedRoutes(
            pipeline.ingress,
            pipeline.steps,
            apps.public[PROXY_KEY],
            apps.public[HTTP_METRICS_KEY],
            settings.trust,
        )
        refused = 0

        async def one() -> None:
            nonlocal refused
            view = prototype.RequestView("GET", PATH, headers, "127.0.0.1", True)
            if not (await routes.answer(view)).startswith(b"HTTP/1.1 200"):
                refused += 1

        for _ in range(50):  # keys fetched, connections open, caches warm
            await one()
        results = []
        for _ in range(repeats):
            left = requests

            async def caller() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    await one()

            refused = 0
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            results.append([1e6 * cpu / requests, requests / wall, refused])
            await asyncio.sleep(1.1)  # the benchmark's 1 s window empties between runs
        print("RESULT " + json.dumps(results))
        await runner.cleanup()

    run(main, use_uvloop=True)


def source_of(revision: str, into: Path) -> str:
    """PYTHONPATH of ``revision``'s gateway and urr_common (``git archive``)."""
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", revision, "services/gateway/src",
         "libs/common/src"],
        capture_output=True, check=True,
    )  # fmt: skip
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return f"{into}/services/gateway/src{os.pathsep}{into}/libs/common/src"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="main", help="git revision ('' for none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.measure:
        measure(options.concurrency, options.requests, 3)
        return
    sys.path.insert(0, str(HERE))
    import gateway_proxy as bench

    from urr_devstack.procs import RedisServer, free_port, wait_listening

    work = Path(tempfile.mkdtemp(prefix="urr-bench-shared-"))
    redis = RedisServer(port=free_port(), workdir=work / "redis")
    nginx = None
    try:
        access_token, entry_token = bench.write_keys_and_sign(work)
        port = free_port()
        nginx = bench.start_upstream(work, port)
        wait_listening("127.0.0.1", port, 10, "upstream nginx")
        redis.start()
        upstream = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "URR_LOG__LEVEL": "WARNING",
            "URR_REDIS__URL": redis.url,
            **{f"URR_UPSTREAMS__{name}": upstream for name in ("AUTH", "QUEUE", "TICKET")},
            "URR_ACCESS_TRUST__JWKS_URL": f"{upstream}/access.json",
            "URR_ENTRY_TRUST__JWKS_URL": f"{upstream}/entry.json",
            "URR_RATE_LIMIT__CATEGORIES": bench.BENCH_CATEGORIES,
            "SHARED_PATH_HEADERS": json.dumps(
                {"Cookie": f"access_token={access_token}", "x-queue-entry-token": entry_token}
            ),
        }
        trees = {"this tree": None}
        if options.before:
            trees = {options.before: source_of(options.before, work / "before"), **trees}
        found: dict[str, list[list[float]]] = {name: [] for name in trees}
        for round_number in range(options.rounds):
            for name, pythonpath in trees.items():
                child_env = dict(env)
                if pythonpath is not None:
                    child_env["PYTHONPATH"] = pythonpath
                args = [sys.executable, __file__, "--measure", "--concurrency",
                        str(options.concurrency), "--requests", str(options.requests)]  # fmt: skip
                done = subprocess.run(
                    args, env=child_env, capture_output=True, text=True, check=False
                )
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    sys.exit(f"{name}: {done.stderr[-2000:]}")
                runs = json.loads(lines[-1].removeprefix("RESULT "))
                found[name].extend(runs)
                load = Path("/proc/loadavg").read_text().split()[:3]
                shown = "  ".join(f"{cpu:6.1f} µs ({refused} not 200)" for cpu, _, refused in runs)
                print(f"round {round_number} {name:12} {shown}  load {load}", flush=True)
        print(f"\nCPU µs per request of the shared code ({options.concurrency} callers):")
        for name, runs in found.items():
            cpu = sorted(run[0] for run in runs)
            print(f"  {name:12} min {cpu[0]:6.1f}  median {statistics.median(cpu):6.1f}")
    finally:
        if nginx is not None:
            nginx.send_signal(signal.SIGTERM)
            nginx.wait(10)
        redis.stop()


PATH = "/api/v1/seats/bench-event/map"

if __name__ == "__main__":
    main()
