"""CPU per request of the two AWS stand-ins, the edge and the API Gateway emulator (issue 22).

    make dynalite && uv run --frozen python bench/edge_apigw_cpu.py \
        [--arrivals 600] [--rate 30] [--rounds 2] [--before main] [--pyspy DIR [--native]]

Every request goes through the edge stand-in (``urr_vwr_lambda.local.edge``) as the flash
crowd's do. Each arrival, one every ``1/rate`` seconds, makes the waiting room's mix: the
waiting page (``GET /vwr/{event}``), a place (``POST /vwr-api/vwr/assign/{event}``), two
checks (``GET /vwr-api/vwr/check/{event}/{requestId}``) a moment apart, and one gated request
behind the edge with a Tier-1 token (``GET /api/v1/queue/{event}/status``, which the edge
verifier lets through to the gateway). The gateway is a stub (a few lines of asyncio in its
own process: its CPU is not counted); the API Gateway emulator runs its 4 spawned containers
on a fresh dynalite, as the devstack runs them (without the origin-verify secret, which needs
moto; its cached lookup is a dictionary read).

``--before REV`` runs the same crowd on that revision's ``urr_vwr_lambda`` (``git archive``,
first on ``PYTHONPATH`` of the edge, the emulator and its containers), alternating with the
working tree's in one run: compare within a run only, the machine is shared.

Printed per run (one JSON line): CPU µs per request of the edge process, of the emulator's
own process (without its containers: the function they run is the deployed one) and of the
containers, client-side P50/P99 per kind of request in ms, the statuses, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from tier1_crowd_cpu import (
    cpu_s,
    dynalite_client,
    export_revision,
    function_env,
    loadavg,
    pct,
    wait_ready,
)

from urr_common.tokens import KeySet, TokenSigner
from urr_devstack.procs import dynalite_server, free_port
from urr_vwr_lambda import tier1
from urr_vwr_lambda.edge_config import build_document
from urr_vwr_lambda.keys import ensure_local_keys
from urr_vwr_lambda.settings import TableSettings, VwrTokenSettings
from urr_vwr_lambda.store import VwrStore
from urr_vwr_lambda.tables import ensure_tables

EVENT = "bench-edge"
KINDS = ("page", "assign", "check", "api")

#: The gateway stand-in: answers every request 200 with a small JSON body, kept alive.
GATEWAY_STUB = r"""
import asyncio, sys
BODY = b'{"status":"waiting","position":1}'
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
          + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
class Stub(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(ANSWER)
async def main():
    server = await asyncio.get_running_loop().create_server(Stub, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


async def arrival(
    session: aiohttp.ClientSession,
    base: str,
    token: str,
    times: dict[str, list[float]],
    statuses: dict[str, int],
) -> None:
    request_id = str(uuid.uuid4())

    async def one(kind: str, method: str, path: str, **kwargs: Any) -> None:
        started = time.perf_counter()
        async with session.request(method, base + path, **kwargs) as answer:
            await answer.read()
            key = f"{kind} {answer.status}"
        times[kind].append((time.perf_counter() - started) * 1000)
        statuses[key] = statuses.get(key, 0) + 1

    await one("page", "GET", f"/vwr/{EVENT}")
    await one("assign", "POST", f"/vwr-api/vwr/assign/{EVENT}", json={"requestId": request_id})
    for _ in range(2):
        await asyncio.sleep(random.uniform(0.2, 0.6))
        await one("check", "GET", f"/vwr-api/vwr/check/{EVENT}/{request_id}")
    cookie = {"Cookie": f"urr-vwr-token={token}"}
    await one("api", "GET", f"/api/v1/queue/{EVENT}/status", headers=cookie)


async def crowd(
    base: str, tokens: list[str], rate: float
) -> tuple[dict[str, list[float]], dict[str, int]]:
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        started = time.monotonic()
        for n, token in enumerate(tokens):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(arrival(session, base, token, times, statuses)))
        await asyncio.gather(*tasks)
    return times, statuses


def run_once(
    label: str, src: Path | None, args: argparse.Namespace, work: Path, tokens: list[str]
) -> dict[str, Any]:
    ports = {name: free_port() for name in ("dyn", "api", "api_m", "edge", "edge_m", "gw")}
    dynalite = dynalite_server(ports["dyn"], work / f"dynalite-{label}.log")
    dynalite.start()
    endpoint = f"http://127.0.0.1:{ports['dyn']}"
    keys = work / "keys"
    common = {
        **os.environ,
        "URR_ENVIRONMENT": "local",
        "URR_EDGE_CONFIG__TARGET": str(work / "edge-config.json"),
    }
    if src is not None:
        common["PYTHONPATH"] = f"{src}{os.pathsep}{common.get('PYTHONPATH', '')}"
    api_env = {
        **common,
        "URR_HTTP__PORT": str(ports["api"]),
        "URR_METRICS__PORT": str(ports["api_m"]),
        **function_env(endpoint, keys),
    }
    edge_env = {
        **common,
        "URR_HTTP__PORT": str(ports["edge"]),
        "URR_METRICS__PORT": str(ports["edge_m"]),
        "URR_API_URL": f"http://127.0.0.1:{ports['api']}",
        "URR_GATEWAY_URL": f"http://127.0.0.1:{ports['gw']}",
    }
    client = dynalite_client(endpoint)
    ensure_tables(client, TableSettings())
    store = VwrStore(client, counters_table="counters", positions_table="positions")
    store.put_event(EVENT, is_active=True, batch_size=500, now_ms=int(time.time() * 1000))
    client.update_item(  # the whole crowd comes from one address: no per-address cap
        TableName="counters",
        Key={"eventId": {"S": EVENT}},
        UpdateExpression="SET placesPerClient = :zero",
        ExpressionAttributeValues={":zero": {"N": "0"}},
    )
    log = (work / f"procs-{label}.log").open("wb")
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)  # noqa: S603
        procs.append(proc)
        return proc

    spies: list[subprocess.Popen[bytes]] = []
    try:
        start([sys.executable, "-c", GATEWAY_STUB, str(ports["gw"])], common)
        apigw = start([sys.executable, "-m", "urr_vwr_lambda.local.apigw"], api_env)
        edge = start([sys.executable, "-m", "urr_vwr_lambda.local.edge"], edge_env)
        wait_ready(f"http://127.0.0.1:{ports['api']}/health/ready")
        wait_ready(f"http://127.0.0.1:{ports['edge']}/health/ready")
        time.sleep(1.0)
        if args.pyspy:
            for name, proc in (("edge", edge), ("apigw", apigw)):
                argv = [shutil.which("py-spy") or "py-spy", "record", "--pid", str(proc.pid)]
                # --native (C frames too) needs the process paused at each sample.
                argv += ["-r", "200", "--native" if args.native else "--nonblocking"]
                argv += ["--format", "raw"]
                argv += ["-o", str(Path(args.pyspy) / f"{label}-{name}.txt")]
                spies.append(
                    subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
                )
        before = (cpu_s(edge.pid, children=False), cpu_s(apigw.pid, children=False))
        before_all = cpu_s(apigw.pid)
        load0 = loadavg()
        wall0 = time.monotonic()
        times, statuses = asyncio.run(crowd(f"http://127.0.0.1:{ports['edge']}", tokens, args.rate))
        wall = time.monotonic() - wall0
        after = (cpu_s(edge.pid, children=False), cpu_s(apigw.pid, children=False))
        after_all = cpu_s(apigw.pid)
    finally:
        for spy in spies:
            spy.send_signal(2)
            spy.wait(30)
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
        log.close()
        dynalite.stop()
    requests = sum(len(values) for values in times.values())
    api_calls = len(times["assign"]) + len(times["check"])
    result: dict[str, Any] = {
        "label": label,
        "requests": requests,
        "edge_us_per_req": round((after[0] - before[0]) / requests * 1e6),
        "apigw_us_per_call": round((after[1] - before[1]) / api_calls * 1e6),
        "containers_us_per_call": round(
            ((after_all - before_all) - (after[1] - before[1])) / api_calls * 1e6
        ),
    }
    for kind in KINDS:
        values = times[kind]
        result[f"{kind}_p50_ms"] = round(statistics.median(values), 1) if values else None
        result[f"{kind}_p99_ms"] = round(pct(values, 0.99), 1) if values else None
    result.update(
        {"statuses": statuses, "wall_s": round(wall, 1), "load": f"{load0} -> {loadavg()}"}
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arrivals", type=int, default=600)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", help="a git revision to compare with (e.g. main)")
    parser.add_argument("--pyspy", help="a folder for py-spy raw profiles of both processes")
    parser.add_argument("--native", action="store_true", help="py-spy --native")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="urr-edge-bench-") as folder:
        work = Path(folder)
        key = ensure_local_keys(VwrTokenSettings(private_key_file=work / "keys" / "local-1.pem"))
        settings = VwrTokenSettings()
        (work / "edge-config.json").write_bytes(
            build_document(
                KeySet([key.verification_key()]),
                [EVENT],
                max_age_s=15,
                issuer=settings.issuer,
                audience=settings.audience,
            )
        )
        signer = TokenSigner(key, issuer=settings.issuer, audience=settings.audience, ttl_s=1800)
        tokens = [
            tier1.issue(
                signer, event_id=EVENT, request_id=str(uuid.uuid4()), position=n + 1, user_id=None
            )
            for n in range(args.arrivals)
        ]
        variants: list[tuple[str, Path | None]] = [("after", None)]
        if args.before:
            variants.insert(0, ("before", export_revision(args.before, work / "before")))
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
        for round_no in range(args.rounds):
            order = variants if round_no % 2 == 0 else list(reversed(variants))
            for name, src in order:
                result = run_once(f"{name}-{round_no}", src, args, work, tokens)
                results[name].append(result)
                print(json.dumps(result), flush=True)
        for name, runs in results.items():
            figures = {
                field: statistics.median(run[field] for run in runs)
                for field in ("edge_us_per_req", "apigw_us_per_call", "containers_us_per_call")
            }
            print(name, "median of rounds:", json.dumps(figures))


if __name__ == "__main__":
    main()
