"""``Http1Site``: an ``Http1Server`` as an aiohttp site (never compiled by mypyc: its base,
``BaseSite``, has ``__slots__``); ``urr_common.http1`` re-exports it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_runner import BaseSite

from urr_common.http1 import Http1Server


class Http1Site(BaseSite):
    """An ``Http1Server`` as an aiohttp site, so an ``AppRunner`` starts and drains it like
    its other listeners: ``runner.cleanup()`` stops it."""

    __slots__ = ("_drain_s", "_host", "_make", "_port", "_reuse_port", "_wrap", "listener")

    def __init__(
        self,
        runner: web.BaseRunner,
        make: Callable[[], Http1Server],
        host: str | None,
        port: int,
        *,
        drain_timeout_s: float,
        reuse_port: bool | None = None,
        wrap: Callable[[Callable[[], asyncio.Protocol]], Callable[[], asyncio.Protocol]]
        | None = None,
    ) -> None:
        super().__init__(runner)
        self._make = make
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._drain_s = drain_timeout_s
        self._wrap = wrap
        self.listener: Http1Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        await super().start()
        self.listener = self._make()
        self._port = await self.listener.start(
            self._host, self._port, reuse_port=self._reuse_port, wrap=self._wrap
        )

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.close(self._drain_s)
        await super().stop()
