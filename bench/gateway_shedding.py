"""What the per-address shedder adds to each chunk a connection receives, in µs.

The shedder (``urr_gateway.shedding``) sits between the transport and aiohttp's request
handler: every ``data_received`` passes through it. This times that call for a connection
within its budget (the normal case: refill, one ``bytes.count``, hand on) against handing the
chunk to the same inner protocol directly, and the over-budget path (hold and pause), in one
run. The inner protocol does nothing, so the difference is the shedder's cost alone; the
whole-request cost with and without it is ``bench/gateway_proxy.py`` with
``--env URR_SHED__ENABLED=false``. Usage::

    uv run python bench/gateway_shedding.py [--repeat 7] [--number 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import timeit
from typing import Any

from urr_gateway.shedding import Shedder, SheddingProtocol, SheddingSettings
from urr_gateway.trust import TrustSettings

REQUEST = (
    b"GET /api/v1/events/bench HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
    + b"x" * 300
    + b"\r\n\r\n"
)


class _Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


class _Transport(asyncio.Transport):
    """Only what the shedder asks of a transport."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("198.51.100.7", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _median_us(statement: Any, repeat: int, number: int) -> float:
    return 1e6 * statistics.median(timeit.repeat(statement, repeat=repeat, number=number)) / number


async def main(repeat: int, number: int) -> None:
    sink = _Sink()
    generous = Shedder(SheddingSettings(), TrustSettings())
    generous._burst = 1e18  # never runs dry over millions of timed calls
    within = SheddingProtocol(generous, lambda: sink)
    within.connection_made(_Transport())
    assert within._peer is not None
    within._peer.tokens = 1e18
    tight = Shedder(SheddingSettings(requests_per_s=1.0, request_burst=1), TrustSettings())
    over = SheddingProtocol(tight, lambda: sink)
    over.connection_made(_Transport())
    over.data_received(REQUEST)  # the bucket is empty from here on: every chunk is held

    def over_budget() -> None:
        over.data_received(REQUEST)
        over._held = None  # what the resume timer would take; keeps memory flat

    direct = _median_us(lambda: sink.data_received(REQUEST), repeat, number)
    shed = _median_us(lambda: within.data_received(REQUEST), repeat, number)
    pipelined = REQUEST * 16
    direct_16 = _median_us(lambda: sink.data_received(pipelined), repeat, number)
    shed_16 = _median_us(lambda: within.data_received(pipelined), repeat, number)
    held = _median_us(over_budget, repeat, number)
    print(f"{'µs per data_received':44}{'direct':>10}{'shedder':>10}{'added':>10}")
    print(f"{'one request (~380 B), within budget':44}{direct:10.3f}{shed:10.3f}", end="")
    print(f"{shed - direct:10.3f}")
    print(f"{'16 pipelined requests, within budget':44}{direct_16:10.3f}{shed_16:10.3f}", end="")
    print(f"{shed_16 - direct_16:10.3f}")
    print(f"{'one request, over budget (held, paused)':44}{'':10}{held:10.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000)
    options = parser.parse_args()
    asyncio.run(main(options.repeat, options.number))
