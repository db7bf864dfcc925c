"""``web.middleware`` for middlewares defined in modules mypyc compiles.

aiohttp marks a new-style middleware by setting ``__middleware_version__`` on the function;
a compiled function takes no attributes, so the compiled one is wrapped in a plain Python
coroutine function that is marked instead (a bound method too: the filters' middlewares are
methods, and mypyc refuses decorators on methods). This module is never compiled.
"""

from __future__ import annotations

from types import FunctionType

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


def middleware(handle: Middleware) -> Middleware:
    """``web.middleware(handle)``, through a Python wrapper when ``handle`` takes no
    attributes: a compiled function, or a bound method (compiled or not)."""
    if isinstance(handle, FunctionType):
        return web.middleware(handle)

    async def marked(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handle(request, handler)

    return web.middleware(marked)
