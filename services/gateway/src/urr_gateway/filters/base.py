"""The shape every gateway filter has: an aiohttp middleware with a fixed order number, and
(for the gateway's own filters) the same filter as a plain call, a ``Step``.

The gateway runs its filters as steps inside one middleware (``chain.GatewayPipeline``): no
coroutine frame, ``functools.partial`` or ``Request`` lookup per filter, and a step that has
nothing to wait for (a cached token, a verdict the limiter brought) returns ``None`` without
creating a coroutine at all. A filter given only as a middleware (tests put stand-ins in a
slot) still runs, as a middleware, in its place in the order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from urr_gateway.context import RequestFacts

#: A filter as a plain call: ``None`` when it is done, else an awaitable to finish it. It
#: refuses by raising (a ``ProblemError``); what it learns goes into the facts (and request).
Step = Callable[[web.Request, RequestFacts], "Awaitable[object] | None"]


@dataclass(frozen=True, slots=True)
class GatewayFilter:
    """``order`` as in the design: cookie auth -2, JWT auth -1, rate limit 0, entry token 1."""

    name: str
    order: int
    middleware: Middleware
    #: The same filter as a ``Step`` (``None``: it runs as its middleware).
    step: Step | None = None
