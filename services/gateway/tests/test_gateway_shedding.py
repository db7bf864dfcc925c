"""Issue 16 #1: a flood from one address is shed before HTTP parsing.

The first tests serve a trivial aiohttp app through ``SheddingTCPSite`` (real sockets, uvloop
when installed, as the gateway runs); the flooder binds its sockets to 127.0.0.2 and the
legitimate client uses 127.0.0.1 (all of 127/8 is loopback on Linux). The last test floods a
real ``python -m urr_gateway`` worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import orjson
import pytest
import uvloop
from aiohttp import web

from urr_common.settings import RedisSettings, SettingsError, load_settings
from urr_devstack.procs import free_port
from urr_gateway.app import create_app
from urr_gateway.server import GatewayApps, serve_gateway
from urr_gateway.settings import (
    AccessTrustSettings,
    EntryTrustSettings,
    GatewayHttpSettings,
    GatewaySettings,
)
from urr_gateway.shedding import Shedder, SheddingSettings, SheddingTCPSite, peer_key
from urr_gateway.trust import TrustSettings

FLOODER = "127.0.0.2"
REQUEST = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"

Served = tuple[int, Shedder]
Serve = Callable[..., Awaitable[Served]]


class Servers:
    """Trivial aiohttp apps served through ``SheddingTCPSite`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.runners: list[web.AppRunner] = []

    async def start(self, trust: TrustSettings | None = None, **shed: object) -> Served:
        app = web.Application()

        async def ok(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def size(request: web.Request) -> web.Response:
            return web.Response(text=str(len(await request.read())))

        app.router.add_get("/", ok)
        app.router.add_post("/size", size)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.runners.append(runner)
        shedder = Shedder(SheddingSettings.model_validate(shed), trust or TrustSettings())
        site = SheddingTCPSite(runner, shedder, host="127.0.0.1", port=0)
        await site.start()
        return site.port, shedder

    async def close(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers = Servers()
    yield servers.start
    await servers.close()


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


class Counted:
    """Counts the answers arriving on one connection."""

    def __init__(self, reader: asyncio.StreamReader, expect: int | None = None) -> None:
        self.answers = 0
        self.expect = expect
        #: Set once ``expect`` answers have arrived.
        self.complete = asyncio.Event()
        self.task = asyncio.create_task(self._run(reader))

    async def _run(self, reader: asyncio.StreamReader) -> None:
        while chunk := await reader.read(1 << 16):
            self.answers += chunk.count(b"HTTP/1.1 200")
            if self.expect is not None and self.answers >= self.expect:
                self.complete.set()


async def timed_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes = REQUEST
) -> float:
    started = time.perf_counter()
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return time.perf_counter() - started


async def test_a_pipelined_flood_gets_its_budget_while_another_address_is_served_at_once(
    serve: Serve,
) -> None:
    port, shedder = await serve(requests_per_s=200, request_burst=100)
    flood = []
    for _ in range(4):
        reader, writer = await connect(port, FLOODER)
        writer.write(REQUEST * 5000)  # 20,000 requests, pipelined, on four connections
        flood.append((Counted(reader), writer))
    legit_reader, legit_writer = await connect(port, "127.0.0.1")
    started = time.monotonic()
    latencies = []
    while time.monotonic() - started < 1.5:
        latencies.append(await timed_get(legit_reader, legit_writer))
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - started
    answered = sum(counted.answers for counted, _ in flood)
    for counted, writer in flood:
        counted.task.cancel()
        writer.close()
    legit_writer.close()
    # The flood got its burst and its rate, not the 20,000 it asked for.
    assert 100 <= answered <= 100 + 200 * (elapsed + 0.5), answered
    assert shedder.pauses >= 1
    # The other address was never paused and answered promptly throughout.
    assert len(latencies) > 50
    assert max(latencies) < 0.25, sorted(latencies)[-5:]
    assert shedder.peers["127.0.0.1"].tokens > 50


async def test_a_paused_flood_resumes_at_the_budgets_rate(serve):
    port, _ = await serve(requests_per_s=100, request_burst=10)
    reader, writer = await connect(port, FLOODER)
    counted = Counted(reader)
    writer.write(REQUEST * 400)
    await asyncio.sleep(1.0)
    at_one = counted.answers
    await asyncio.sleep(1.0)
    at_two = counted.answers
    counted.task.cancel()
    writer.close()
    assert 60 <= at_one <= 130, at_one  # the burst of 10, then ~100 a second
    assert 60 <= at_two - at_one <= 140, (at_one, at_two)


async def test_the_connection_over_the_per_address_cap_gets_a_raw_503_and_is_closed(
    serve: Serve,
) -> None:
    port, shedder = await serve(max_connections_per_address=3)
    held = [await connect(port, FLOODER) for _ in range(3)]
    reader, writer = await connect(port, FLOODER)
    answer = await asyncio.wait_for(reader.read(), 5)  # read to EOF: closed by the gateway
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"Content-Type: application/problem+json" in head
    assert b"Retry-After: 1" in head
    assert orjson.loads(body)["code"] == "too_many_connections"
    assert shedder.refused_connections == 1
    # The connections within the cap are served; another address is not affected.
    for held_reader, held_writer in held:
        await timed_get(held_reader, held_writer)
    other_reader, other_writer = await connect(port, "127.0.0.1")
    await timed_get(other_reader, other_writer)
    other_writer.close()
    # Closing one frees a place for the address.
    held[0][1].close()
    await asyncio.sleep(0.1)
    again_reader, again_writer = await connect(port, FLOODER)
    await timed_get(again_reader, again_writer)
    again_writer.close()
    for _, held_writer in held[1:]:
        held_writer.close()


async def test_requests_split_and_held_over_budget_arrive_whole_and_in_order(
    serve: Serve,
) -> None:
    """Over budget, the bytes are cut after a request head and the rest held: the bodies
    that follow the heads must still reach aiohttp intact, in order."""
    port, shedder = await serve(requests_per_s=200, request_burst=20)
    reader, writer = await connect(port, FLOODER)
    sizes = [1000 + 37 * index for index in range(60)]
    writer.write(
        b"".join(
            b"POST /size HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % n
            + bytes([65 + index % 26]) * n
            for index, n in enumerate(sizes)
        )
    )
    answers = []
    for _ in sizes:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answers.append(int(await reader.readexactly(length)))
    writer.close()
    assert answers == sizes
    assert shedder.pauses >= 1


async def test_reconnecting_does_not_refill_the_bucket(serve):
    port, shedder = await serve(requests_per_s=20, request_burst=20)
    reader, writer = await connect(port, FLOODER)
    counted = Counted(reader)
    writer.write(REQUEST * 100)
    await asyncio.sleep(0.3)
    writer.close()
    counted.task.cancel()
    await asyncio.sleep(0.05)
    assert FLOODER in shedder.peers  # remembered while its bucket refills
    reader, writer = await connect(port, FLOODER)
    counted = Counted(reader)
    writer.write(REQUEST * 100)
    await asyncio.sleep(0.3)
    writer.close()
    counted.task.cancel()
    assert counted.answers <= 12, counted.answers


async def test_a_trusted_proxy_peer_is_not_shed(serve: Serve) -> None:
    trust = TrustSettings.model_validate({"proxy_cidrs": "127.0.0.2/32"})
    port, shedder = await serve(
        trust, requests_per_s=10, request_burst=10, max_connections_per_address=2
    )
    connections = [await connect(port, FLOODER) for _ in range(5)]
    counters = []
    for reader, writer in connections:
        writer.write(REQUEST * 200)
        counters.append(Counted(reader, expect=200))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.complete.wait() for c in counters)), 5)
    assert [c.answers for c in counters] == [200] * 5
    assert shedder.pauses == 0
    assert shedder.refused_connections == 0
    assert FLOODER not in shedder.peers
    for counted, (_, writer) in zip(counters, connections, strict=True):
        counted.task.cancel()
        writer.close()


def test_the_same_attacks_on_uvloop():
    """The gateway runs on uvloop, whose transports are not asyncio's classes (and stepping
    out of the way for a trusted peer swaps the transport's protocol)."""

    async def scenario() -> None:
        servers = Servers()
        try:
            await test_a_pipelined_flood_gets_its_budget_while_another_address_is_served_at_once(
                servers.start
            )
            await test_the_connection_over_the_per_address_cap_gets_a_raw_503_and_is_closed(
                servers.start
            )
            await test_a_trusted_proxy_peer_is_not_shed(servers.start)
            await test_requests_split_and_held_over_budget_arrive_whole_and_in_order(servers.start)
        finally:
            await servers.close()

    uvloop.run(scenario())


def test_ipv6_peers_are_shed_by_64():
    assert (
        peer_key("2001:db8:1:2:aaaa::1")
        == peer_key("2001:db8:1:2:bbbb::9")
        == ("2001:db8:1:2::/64")
    )
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert peer_key("10.0.0.1") == "10.0.0.1"


def test_defaults():
    shed = load_settings(GatewaySettings).shed
    assert shed.enabled
    assert shed.max_connections_per_address == 256
    assert (shed.requests_per_s, shed.request_burst) == (200.0, 1000)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("URR_SHED__MAX_CONNECTIONS_PER_ADDRESS", "0", "URR_SHED__MAX_CONNECTIONS_PER_ADDRESS"),
        ("URR_SHED__REQUESTS_PER_S", "0", "URR_SHED__REQUESTS_PER_S"),
        ("URR_SHED__REQUESTS_PER_S", "lots", "URR_SHED__REQUESTS_PER_S"),
        ("URR_SHED__REQUEST_BURST", "0", "URR_SHED__REQUEST_BURST"),
        ("URR_SHED__REQUEST_BURST", "19", "at least a tenth of URR_SHED__REQUESTS_PER_S"),
        ("URR_SHED__RETRY_AFTER_S", "0", "URR_SHED__RETRY_AFTER_S"),
        ("URR_SHED__ENABLED", "maybe", "URR_SHED__ENABLED"),
    ],
)
def test_bad_shedding_settings_are_refused_with_the_variable_named(
    monkeypatch, variable, value, message
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message):
        load_settings(GatewaySettings)


# One gateway interpreter starts here; on a loaded 2-core machine that alone takes seconds.
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("server", ["aiohttp", "protocol"])
async def test_a_flooded_gateway_process_answers_another_address_promptly(
    redis_url, tmp_path, gateway_process, server
):
    """Attack: 8 connections from one address pipelining 40,000 requests, plus connections
    past the cap, at a ``python -m urr_gateway`` worker; meanwhile a client on another
    address polls health and gets answers at once."""
    port = free_port()
    dead = free_port()
    metrics_port = free_port()
    env = {
        **os.environ,
        "URR_HTTP__PORT": str(port),
        "URR_WORKERS": "1",
        "URR_INTERNAL__PORT": str(free_port()),
        "URR_METRICS__PORT": str(metrics_port),
        "URR_REDIS__URL": redis_url,
        "URR_ACCESS_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_ENTRY_TRUST__JWKS_URL": f"http://127.0.0.1:{dead}/jwks.json",
        "URR_HTTP__SERVER": server,
        "URR_SHED__MAX_CONNECTIONS_PER_ADDRESS": "8",
        "URR_SHED__REQUESTS_PER_S": "100",
        "URR_SHED__REQUEST_BURST": "100",
        "URR_LOG__LEVEL": "WARNING",
    }
    flood: list[tuple[Counted, asyncio.StreamWriter]] = []
    request = b"GET /health/live HTTP/1.1\r\nHost: gw\r\n\r\n"
    async with gateway_process(env, tmp_path / "gateway.log"):
        try:
            await _flood_and_measure(port, metrics_port, request, flood)
        finally:
            for counted, writer in flood:
                counted.task.cancel()
                writer.close()


async def _flood_and_measure(
    port: int, metrics_port: int, request: bytes, flood: list[tuple[Counted, asyncio.StreamWriter]]
) -> None:
    for _ in range(8):
        reader, writer = await connect(port, FLOODER)
        writer.write(request * 5000)
        flood.append((Counted(reader), writer))
    # The ninth connection of the address is refused raw, without being read.
    reader, writer = await connect(port, FLOODER)
    refused = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503 "), refused[:100]
    assert b'"code":"too_many_connections"' in refused
    legit_reader, legit_writer = await connect(port, "127.0.0.1")
    started = time.monotonic()
    latencies = []
    while time.monotonic() - started < 2.0:
        latencies.append(await timed_get(legit_reader, legit_writer, request))
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    legit_writer.close()
    answered = sum(counted.answers for counted, _ in flood)
    assert answered <= 100 + 100 * (elapsed + 1.0), answered
    assert len(latencies) > 40
    assert sorted(latencies)[int(0.9 * len(latencies))] < 0.1, sorted(latencies)[-5:]
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{metrics_port}/metrics") as answer,
    ):
        metrics = await answer.text()
    assert 'urr_gateway_shed_total{kind="connection"} 1.0' in metrics
    assert 'urr_gateway_shed_total{kind="pause"}' in metrics


@pytest.mark.parametrize("server", ["aiohttp", "protocol"])
async def test_serve_gateway_sheds_by_its_settings_and_spares_its_trusted_proxies(
    redis_url, server
):
    """The wiring: ``serve_gateway`` builds the public listener from ``settings.shed`` and
    ``settings.trust``; a trusted proxy (127.0.0.2) is never shed, anyone else (127.0.0.3)
    is."""
    settings = load_settings(
        GatewaySettings,
        # In this test's own process: leave pytest's collector as it is (no freeze).
        http=GatewayHttpSettings(port=free_port(), server=server, gc_gen0_threshold=0),
        redis=RedisSettings(url=redis_url),
        access_trust=AccessTrustSettings(jwks_url=None),
        entry_trust=EntryTrustSettings(jwks_url=None),
        trust={"proxy_cidrs": "127.0.0.2/32"},
        shed={"requests_per_s": 20, "request_burst": 20, "max_connections_per_address": 2},
    )
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_gateway(GatewayApps(public=create_app(settings)), settings, stop=stop)
    )
    request = b"GET /health/live HTTP/1.1\r\nHost: gw\r\n\r\n"
    port = settings.http.port
    opened: list[asyncio.StreamWriter] = []
    try:
        for _ in range(100):
            try:
                reader, writer = await connect(port, "127.0.0.1")
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        # The trusted proxy: more connections than the cap, more requests than the budget.
        proxies = []
        for _ in range(3):
            reader, writer = await connect(port, "127.0.0.2")
            opened.append(writer)
            writer.write(request * 100)
            proxies.append(Counted(reader, expect=100))
        await asyncio.wait_for(asyncio.gather(*(c.complete.wait() for c in proxies)), 10)
        # Anyone else: the budget, and the third connection refused.
        reader, writer = await connect(port, "127.0.0.3")
        opened.append(writer)
        writer.write(request * 100)
        other = Counted(reader)
        await asyncio.sleep(0.5)
        assert 20 <= other.answers <= 40, other.answers
        _, second = await connect(port, "127.0.0.3")
        opened.append(second)
        refused_reader, refused_writer = await connect(port, "127.0.0.3")
        opened.append(refused_writer)
        assert (await asyncio.wait_for(refused_reader.read(), 5)).startswith(b"HTTP/1.1 503 ")
        for counted in (*proxies, other):
            counted.task.cancel()
    finally:
        for writer in opened:
            writer.close()
        stop.set()
        await server
