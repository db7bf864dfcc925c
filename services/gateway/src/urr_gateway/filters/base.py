"""The shape every gateway filter has: an aiohttp middleware with a fixed order number."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp.typedefs import Middleware


@dataclass(frozen=True)
class GatewayFilter:
    """``order`` as in the design: cookie auth -2, JWT auth -1, rate limit 0, entry token 1."""

    name: str
    order: int
    middleware: Middleware
