"""``Http1TestServer``: aiohttp's ``TestServer`` for an app served by a listener on the
connection layer ``urr_common.http1`` (the gateway's, the API Gateway emulator's), so a
test's ``TestClient`` drives the same listener the service runs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from urr_common.http1 import Http1Site


class Http1TestServer(TestServer):
    """``site(runner, host)`` makes the listener's site on a free port."""

    def __init__(
        self,
        app: web.Application,
        site: Callable[[web.AppRunner, str], Http1Site],
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._site = site

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **_: Any) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner()
        await self.runner.setup()
        site = self._site(cast(web.AppRunner, self.runner), self.host)
        await site.start()
        self.port = site.port
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")
