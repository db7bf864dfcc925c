"""``CheckSite``: the check API's listener as an aiohttp site (never compiled by mypyc: its
base, ``BaseSite``, has ``__slots__``); ``urr_gateway.checkserver`` re-exports it."""

from __future__ import annotations

from aiohttp import web

from urr_common.http1 import Http1Site
from urr_gateway.checkapi import CheckService
from urr_gateway.checkserver import CheckServer


class CheckSite(Http1Site):
    """``CheckServer`` as an aiohttp site (``runner.cleanup()`` stops it)."""

    def __init__(
        self,
        runner: web.AppRunner,
        service: CheckService,
        host: str | None,
        port: int,
        *,
        drain_timeout_s: float,
        reuse_port: bool | None = None,
    ) -> None:
        super().__init__(
            runner,
            lambda: CheckServer(service),
            host,
            port,
            drain_timeout_s=drain_timeout_s,
            reuse_port=reuse_port,
        )
