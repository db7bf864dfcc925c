"""Shedding before HTTP parsing: per-peer-address admission at the transport (issue 16).

A flood from one address can cost a worker more than any refusal inside it: aiohttp spends
~250 µs of CPU parsing and answering *any* request, so a flood of 23,000 req/s is 4-5x what
one worker can even refuse, and every legitimate request waits behind it in the same event
loop. This module stops such a flood before aiohttp sees its bytes, at nearly zero CPU:

- **Connections per address are capped** (``max_connections_per_address``). The connection
  over the cap is answered with a canned ``503 too_many_connections`` problem written raw (no
  parsing: nothing it sent is read) and closed at once.
- **Each address has a token bucket of request heads** (``requests_per_s``, ``request_burst``).
  Every chunk read from a connection costs the number of request-head terminators
  (``\\r\\n\\r\\n``) in it, and at least one. Of a chunk the bucket cannot pay for, aiohttp
  gets the requests it can pay for (split after a head); the rest is held, not parsed, and
  the connection's reading is *paused* (``transport.pause_reading``) until the bucket has
  refilled; the kernel's socket buffers then fill and TCP flow control slows
  the sender, which costs this process nothing. All connections of one address share the
  bucket, so opening more connections buys nothing.
- IPv6 addresses are counted by /64, as the anonymous rate limit does (``trust``).
- **Peers in the trusted proxy CIDRs (``URR_TRUST__PROXY_CIDRS``) are not shed here**: in
  production every connection comes from the ALB (in front of it CloudFront), so one bucket
  per peer would throttle every client at once. Their connections are handed to aiohttp
  untouched (the wrapper steps out of the transport). Behind a trusted proxy, per-client
  shedding is the edge's job (CloudFront/WAF rate rules, issue 15), and the per-client rate
  limiter after parsing still limits each client address.

State is per worker process: with ``URR_WORKERS=N`` an address's connections spread over the
workers (SO_REUSEPORT), so it may get up to N times each budget.

The hot path is one attribute load for the peer's state, a clock read, a little arithmetic
and ``bytes.count`` per chunk received; nothing is allocated unless the peer is over budget.

Body bytes are not budgeted here: an upload costs little CPU per byte (it is streamed) and is
bounded by ``URR_HTTP__MAX_BODY_BYTES`` and the proxy's body deadlines.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections.abc import Callable
from typing import Any, Self, cast

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, Field, model_validator

from urr_common.problems import PROBLEM_CONTENT_TYPE, Problem
from urr_gateway.trust import IPV6_BUCKET_PREFIX, ProxyTrust, TrustSettings, canonical_ip

#: One request head ends with this; counting it is how a chunk is priced.
_HEAD_END = b"\r\n\r\n"
#: Shortest pause: timers finer than this only cost wake-ups.
_MIN_PAUSE_S = 0.02


class SheddingSettings(BaseModel):
    """``URR_SHED__*``: per-address admission before HTTP parsing (public listener only).

    The defaults are far above what browsers do, even many behind one NAT: a browser opens at
    most 6 HTTP/1.1 connections per host and, on this site, a page load is a few dozen API
    requests and the waiting room polls every 1-2 seconds. 256 connections and 200 request
    heads a second (bursts of 1,000) per address are ~40 browsers each loading a page at the
    same moment, or 200-400 browsers polling, behind one address; a single flooding process
    reaches those limits in milliseconds. In production the gateway's peers are the ALB
    (trusted, never shed), so these budgets only meet whoever reaches it directly.
    """

    #: Off: the public listener is plain aiohttp.
    enabled: bool = True
    #: Open connections per address (IPv6: per /64); the next one gets a raw 503 and is closed.
    max_connections_per_address: int = Field(default=256, ge=1, le=1_000_000)
    #: Request heads per second per address, sustained; over it, reading pauses.
    requests_per_s: float = Field(default=200.0, gt=0.0, le=1_000_000.0)
    #: Request heads an address may send at once (the bucket's size).
    request_burst: int = Field(default=1000, ge=1, le=10_000_000)
    #: ``Retry-After`` of the canned 503.
    retry_after_s: int = Field(default=1, ge=1, le=3600)

    @model_validator(mode="after")
    def _burst_covers_a_second(self) -> Self:
        if self.request_burst < self.requests_per_s / 10:
            raise ValueError(
                "URR_SHED__REQUEST_BURST must be at least a tenth of URR_SHED__REQUESTS_PER_S "
                f"({self.requests_per_s / 10:g}): a smaller bucket pauses a browser's page load "
                "that the rate would allow"
            )
        return self


@functools.lru_cache(maxsize=65_536)
def peer_key(host: str) -> str:
    """The key an address is shed by: the IPv4 address, or an IPv6 address's /64."""
    parsed = canonical_ip(host)
    if parsed is None:
        return host
    if isinstance(parsed, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((parsed, IPV6_BUCKET_PREFIX), strict=False).with_prefixlen
    return str(parsed)


class _Peer:
    """One address's bucket and open connections (shared by all its connections)."""

    __slots__ = ("connections", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.connections = 0


class Shedder:
    """The per-address state of one listener, and the protocol factory wrapping aiohttp's."""

    def __init__(
        self,
        settings: SheddingSettings,
        trust: TrustSettings,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self._rate = settings.requests_per_s
        self._burst = float(settings.request_burst)
        self._cap = settings.max_connections_per_address
        self._trusted = ProxyTrust(trust.proxy_cidrs).is_trusted if trust.proxy_cidrs else None
        self.peers: dict[str, _Peer] = {}
        body = orjson.dumps(
            Problem(
                status=503,
                code="too_many_connections",
                title="Service Unavailable",
                detail="too many open connections from this address",
            ).to_dict()
        )
        self.refusal = (
            b"HTTP/1.1 503 Service Unavailable\r\n"
            b"Content-Type: " + PROBLEM_CONTENT_TYPE.encode() + b"\r\n"
            b"Retry-After: " + str(settings.retry_after_s).encode() + b"\r\n"
            b"Connection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        #: Counts since start (also in Prometheus when a registry is given).
        self.refused_connections = 0
        self.pauses = 0
        self._counter = (
            Counter(
                "urr_gateway_shed_total",
                "Connections refused over the per-address cap (connection) and connections "
                "whose reading was paused over the per-address request budget (pause).",
                ["kind"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for ``loop.create_server``, wrapping aiohttp's ``Server``."""

        def make() -> asyncio.Protocol:
            return SheddingProtocol(self, inner)

        return make

    # -- bookkeeping (cold path: once per connection or per pause) ---------------------

    def admit(self, key: str) -> _Peer | None:
        peer = self.peers.get(key)
        if peer is None:
            peer = self.peers[key] = _Peer(self._burst, time.monotonic())
        elif peer.connections >= self._cap:
            self.refused_connections += 1
            if self._counter is not None:
                self._counter.labels("connection").inc()
            return None
        peer.connections += 1
        return peer

    def release(self, key: str, peer: _Peer) -> None:
        peer.connections -= 1
        if peer.connections:
            return
        refill_s = (self._burst - self.refill(peer)) / self._rate
        if refill_s <= 0:
            self._forget(key, peer)
        else:
            # Kept until full again: reconnecting must not buy a fresh bucket.
            asyncio.get_running_loop().call_later(refill_s, self._forget, key, peer)

    def _forget(self, key: str, peer: _Peer) -> None:
        if peer.connections == 0 and self.peers.get(key) is peer:
            del self.peers[key]

    def refill(self, peer: _Peer) -> float:
        now = time.monotonic()
        tokens = peer.tokens + (now - peer.stamp) * self._rate
        peer.tokens = tokens if tokens < self._burst else self._burst
        peer.stamp = now
        return peer.tokens

    def paused(self) -> None:
        self.pauses += 1
        if self._counter is not None:
            self._counter.labels("pause").inc()

    def wait_s(self, peer: _Peer) -> float:
        """How long a paused connection sleeps before trying again.

        Long enough for one request head per open connection of the address: however many
        connections it opens, their wake-ups stay at about ``requests_per_s`` a second.
        """
        return max(_MIN_PAUSE_S, (max(1, peer.connections) - peer.tokens) / self._rate)

    def trusted(self, host: str) -> bool:
        return self._trusted is not None and self._trusted(host)


#: Stands in for aiohttp's handler on a connection refused at the cap (every call a no-op).
_NO_PROTOCOL = asyncio.Protocol()


class SheddingProtocol(asyncio.Protocol):
    """Sits between the transport and aiohttp's ``RequestHandler`` of one connection."""

    __slots__ = (
        "_held",
        "_held_at",
        "_inner",
        "_key",
        "_make_inner",
        "_peer",
        "_shedder",
        "_timer",
        "_transport",
    )

    def __init__(self, shedder: Shedder, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self._shedder = shedder
        #: aiohttp's handler is made only for a connection that is admitted: refusing one
        #: at the cap costs no ``RequestHandler``.
        self._make_inner = make_inner
        self._inner: asyncio.Protocol = _NO_PROTOCOL
        self._transport: asyncio.Transport | None = None
        self._key = ""
        self._peer: _Peer | None = None
        #: Bytes read while the address was over budget, from ``_held_at`` on not yet given
        #: to aiohttp (an offset, so admitting a few requests never copies the rest).
        self._held: bytes | None = None
        self._held_at = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peername = transport.get_extra_info("peername")
        host = peername[0] if isinstance(peername, tuple) and peername else ""
        shedder = self._shedder
        if not host or shedder.trusted(host):
            # A trusted proxy (or a socket without an address): aiohttp alone from here on.
            inner = self._make_inner()
            transport.set_protocol(inner)
            inner.connection_made(transport)
            return
        self._key = peer_key(host)
        peer = shedder.admit(self._key)
        if peer is None:
            transport.write(shedder.refusal)
            transport.close()
            return
        self._peer = peer
        self._transport = transport
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        peer = self._peer
        if peer is None:
            return  # refused at accept: never parsed
        if self._held is not None:
            # Over budget and paused; aiohttp's own flow control resumed reading meanwhile.
            self._held = self._held[self._held_at :] + data
            self._held_at = 0
            self._pause()
            return
        # Inline refill: the hot path (one clock read, arithmetic, one count).
        now = time.monotonic()
        shedder = self._shedder
        tokens = peer.tokens + (now - peer.stamp) * shedder._rate
        if tokens > shedder._burst:
            tokens = shedder._burst
        peer.stamp = now
        heads = data.count(_HEAD_END) or 1
        if heads <= tokens:
            peer.tokens = tokens - heads
            self._inner.data_received(data)
            return
        peer.tokens = tokens
        self._held = data
        self._held_at = 0
        self._admit_held(peer)

    def _admit_held(self, peer: _Peer) -> None:
        """Over budget: give aiohttp the request heads the bucket pays for (the held bytes up
        to the end of the last of them), keep the rest; pause until the bucket refills.

        Scans only the part it admits: a large held buffer is not counted again each time.
        """
        held, start = self._held, self._held_at
        if held is None:
            return
        whole = int(peer.tokens)
        if whole < 1:
            self._pause()
            return
        end, found = start, 0
        while found < whole:
            at = held.find(_HEAD_END, end)
            if at < 0:
                break
            end = at + 4
            found += 1
        if found < whole:
            # Everything held fits the budget (a partial request counts as one if alone).
            peer.tokens -= found or 1
            self._held = None
            self._inner.data_received(held[start:] if start else held)
            self._resume_reading()
            return
        peer.tokens -= found
        self._inner.data_received(held[start:end])
        if end == len(held):
            self._held = None
            self._resume_reading()
            return
        self._held_at = end
        self._pause()

    def _pause(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        if self._timer is None and self._peer is not None:
            self._shedder.paused()
            self._timer = asyncio.get_running_loop().call_later(
                self._shedder.wait_s(self._peer), self._resume
            )

    def _resume(self) -> None:
        self._timer = None
        peer, transport = self._peer, self._transport
        if peer is None or transport is None or self._held is None or transport.is_closing():
            return
        self._shedder.refill(peer)
        self._admit_held(peer)

    def _resume_reading(self) -> None:
        """Read again, unless aiohttp's own flow control holds the connection."""
        transport = self._transport
        inner: Any = self._inner
        if (
            transport is not None
            and not transport.is_closing()
            and not getattr(inner, "_reading_paused", False)
            and not getattr(inner, "_buffer_paused", False)
        ):
            transport.resume_reading()

    def eof_received(self) -> bool | None:
        # A half-close while held: what was held is dropped (only an over-budget sender
        # gets here, and it has stopped sending).
        self._held = None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = None
        peer = self._peer
        if peer is None:
            return
        self._peer = None
        self._transport = None
        self._shedder.release(self._key, peer)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class SheddingTCPSite(web.TCPSite):
    """A ``TCPSite`` whose connections pass through a ``Shedder`` first (plain HTTP only)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        shedder: Shedder,
        *,
        host: str,
        port: int,
        reuse_port: bool | None = None,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port, backlog=backlog)
        self.shedder = shedder
        self._listen = (host, port, reuse_port, backlog)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner is not set up")
        host, port, reuse_port, backlog = self._listen
        listener = await asyncio.get_running_loop().create_server(
            self.shedder.factory(server), host, port, backlog=backlog, reuse_port=reuse_port
        )
        self._server = listener
        self._bound_port = listener.sockets[0].getsockname()[1] if listener.sockets else port


def public_site(
    runner: web.BaseRunner,
    shedding: SheddingSettings,
    trust: TrustSettings,
    registry: CollectorRegistry | None,
    *,
    host: str,
    port: int,
    reuse_port: bool | None = None,
) -> web.TCPSite:
    """The public listener's site: shedding when enabled, plain aiohttp otherwise."""
    if not shedding.enabled:
        return web.TCPSite(runner, host, port, reuse_port=reuse_port)
    shedder = Shedder(shedding, trust, registry)
    return SheddingTCPSite(runner, shedder, host=host, port=port, reuse_port=reuse_port)
