"""``urr_common.resp.RespLane``: many callers' commands on one pipelined connection of a
redis-py client. Against a real Redis: replies as redis-py's (error replies as its
exceptions), a cancelled caller's reply dropped in step. Against a scripted server: a Redis
that stops answering, answers what nobody asked, sends garbage or hangs up fails the callers
waiting with a ``RedisError`` and the next call opens a new connection. A fuzz holds the
encoding to redis-py's own."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import hiredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError, ResponseError

from urr_common.resp import RespLane
from urr_devstack.procs import free_port


@contextlib.asynccontextmanager
async def lane_on(url: str, timeout_s: float = 5.0) -> AsyncIterator[tuple[RespLane, Redis]]:
    redis = Redis.from_url(url)
    lane = RespLane(redis, timeout_s=timeout_s)
    try:
        yield lane, redis
    finally:
        await lane.aclose()
        await redis.aclose()


@pytest.mark.integration
async def test_replies_are_redis_pys(redis_url: str) -> None:
    async with lane_on(redis_url) as (lane, redis):
        # Arguments as redis-py encodes them: str as UTF-8, numbers, bytes as they are.
        assert await lane.call(lane.command("SET", "k:é", "välue\r\n", "PX", 60_000)) == b"OK"
        assert await redis.get("k:é") == "välue\r\n".encode()
        assert await lane.call(lane.command("SET", b"n", 12)) == b"OK"
        assert await lane.call(lane.command("INCRBY", "n", 30)) == 42
        assert await lane.call(lane.command("GET", "missing")) is None
        script = redis.register_script("return {KEYS[1], ARGV[1], 7}")
        await script(keys=["a"], args=["b"])  # loaded
        call = lane.command("EVALSHA", script.sha, 1, "a", "b")
        assert await lane.call(call) == [b"a", b"b", 7]
        with pytest.raises(NoScriptError):
            await lane.call(lane.command("EVALSHA", "0" * 40, 0))
        with pytest.raises(ResponseError, match="not an integer"):
            await lane.call(lane.command("INCR", "k:é"))
        # Several in one write: an error reply is handed back, the others still come.
        batch = lane.command("INCR", "k:é") + lane.command("GET", "n")
        error, value = await lane.call_many(batch, 2)
        assert isinstance(error, ResponseError)
        assert value == b"42"
        # The lane's connection is one checked out of the client's pool.
        clients = await redis.client_list()
        assert len(clients) == 2


@pytest.mark.integration
async def test_a_cancelled_caller_leaves_the_connection_in_step(redis_url: str) -> None:
    async with lane_on(redis_url) as (lane, _):
        assert await lane.call(lane.command("PING")) == b"PONG"
        for n in range(20):
            gone = asyncio.create_task(lane.call(lane.command("ECHO", f"gone-{n}")))
            await asyncio.sleep(0)  # written, its reply owed
            gone.cancel()
            assert await lane.call(lane.command("ECHO", f"kept-{n}")) == f"kept-{n}".encode()
            with pytest.raises(asyncio.CancelledError):
                await gone


@pytest.mark.integration
async def test_unencodable_arguments_are_refused_before_sending(redis_url: str) -> None:
    async with lane_on(redis_url) as (lane, _):
        for bad in (None, True, object()):
            # Interpreted, the encoder refuses (DataError); compiled, the annotation refuses
            # None and object() first (TypeError). Either way nothing is sent.
            with pytest.raises((DataError, TypeError)):
                lane.command("SET", "k", bad)  # type: ignore[arg-type]
        assert await lane.call(lane.command("PING")) == b"PONG"


@dataclass
class ScriptedRedis:
    """A server speaking just enough RESP for redis-py's connection handshake (``CLIENT``
    commands get ``+OK``); any other command gets what ``mode`` says, on each connection."""

    mode: str = "answer"
    port: int = 0
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        parser = hiredis.Reader()
        mode = self.mode  # what this connection does, for good
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                parser.feed(data)
                while (command := parser.gets()) is not False:
                    name = bytes(command[0]).upper()
                    if name in (b"CLIENT", b"SELECT", b"HELLO") or mode == "answer":
                        writer.write(b"+OK\r\n")
                    elif mode == "extra":
                        writer.write(b"+OK\r\n+OK\r\n")
                    elif mode == "garbage":
                        writer.write(b"?what\r\n")
                    elif mode == "close":
                        writer.close()
                        return
                    # "silent": nothing, ever
                await writer.drain()


@contextlib.asynccontextmanager
async def scripted_redis(mode: str) -> AsyncIterator[ScriptedRedis]:
    fake = ScriptedRedis(mode=mode, port=free_port())
    server = await asyncio.start_server(fake.serve, "127.0.0.1", fake.port)
    try:
        yield fake
    finally:
        server.close()
        for writer in fake.writers:
            writer.close()
        await server.wait_closed()


@pytest.mark.parametrize("mode", ["silent", "garbage", "close"])
async def test_a_misbehaving_connection_fails_its_callers_and_is_replaced(mode: str) -> None:
    async with scripted_redis(mode) as fake, lane_on(fake.url, timeout_s=0.2) as (lane, _):
        callers = [
            asyncio.create_task(lane.call(lane.command("SET", f"k{n}", "v"))) for n in range(3)
        ]
        for caller in callers:
            with pytest.raises(RedisConnectionError):
                await caller
        fake.mode = "answer"  # for the connections opened from now on
        assert await lane.call(lane.command("SET", "k", "v")) == b"OK"
        assert fake.connections == 2


async def test_a_reply_nobody_asked_for_replaces_the_connection() -> None:
    async with scripted_redis("extra") as fake, lane_on(fake.url) as (lane, _):
        assert await lane.call(lane.command("SET", "k", "v")) == b"OK"
        fake.mode = "answer"
        for _ in range(500):  # the second reply is read (at once on an idle loop)
            if lane._pipe is None or lane._pipe.closed:
                break
            await asyncio.sleep(0.01)
        assert lane._pipe is not None
        assert lane._pipe.closed
        assert await lane.call(lane.command("SET", "k", "v")) == b"OK"
        assert fake.connections == 2


async def test_a_redis_that_cannot_be_reached_is_a_redis_error() -> None:
    async with lane_on(f"redis://127.0.0.1:{free_port()}/0") as (lane, _):
        with pytest.raises(RedisError):
            await lane.call(lane.command("PING"))
        with pytest.raises(RedisError):
            await lane.call_many(lane.command("PING") * 2, 2)


def random_argument(rng: random.Random) -> bytes | str | int | float:
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 1:
        return "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(160, 0x2FFF)]))
            for _ in range(rng.randrange(0, 20))
        )
    if kind == 2:
        return rng.randrange(-(2**63), 2**63)
    if kind == 3:
        return rng.uniform(-1e9, 1e9)
    return rng.choice(["\r\n", "$3\r\n", "*1\r\n", "", " ", "\x00"])


def test_fuzz_commands_are_encoded_as_redis_py_encodes_them() -> None:
    rng = random.Random(22)
    lane = RespLane(Redis(), timeout_s=1.0)
    packer = Connection()
    for _ in range(2000):
        args: list[bytes | str | int | float] = [rng.choice(["EVALSHA", "SET", "GET"])]
        args += [random_argument(rng) for _ in range(rng.randrange(0, 8))]
        packed = b"".join(packer.pack_command(*args))
        assert lane.command(*args) == packed
        # A head encoded once and reused (the queue's EVALSHA with an event's keys).
        split = rng.randrange(0, len(args) + 1)
        assert lane.command_from(lane.arguments(*args[:split]), split, *args[split:]) == packed
