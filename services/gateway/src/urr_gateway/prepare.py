"""Synchronous twins of the app's ``on_response_prepare`` receivers.

aiohttp's signal awaits each receiver, so the gateway's receivers are coroutine functions;
but what they do (set a few headers) never waits. The protocol server (``publicserver``)
calls a receiver's registered twin directly instead: no coroutine is created and awaited
for every answer. A receiver without a twin is awaited as aiohttp would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Receiver = Callable[[web.Request, web.StreamResponse], Awaitable[None]]
SyncReceiver = Callable[[web.Request, web.StreamResponse], None]

#: ``on_response_prepare`` receiver -> the function doing the same without awaiting.
SYNC_RECEIVERS = web.AppKey("urr_sync_prepare_receivers", dict[Any, SyncReceiver])


def add_sync_receiver(app: web.Application, receiver: Receiver, twin: SyncReceiver) -> None:
    """Record that ``twin(request, response)`` does all that awaiting ``receiver`` does."""
    if SYNC_RECEIVERS not in app:
        app[SYNC_RECEIVERS] = {}
    app[SYNC_RECEIVERS][receiver] = twin


def sync_receivers(app: web.Application) -> tuple[SyncReceiver, ...] | None:
    """The twins of every receiver of ``app.on_response_prepare`` in order (``None``: one
    receiver has none, so they must be awaited)."""
    twins = app.get(SYNC_RECEIVERS, {})
    found = [twins.get(receiver) for receiver in app.on_response_prepare]
    if any(twin is None for twin in found):
        return None
    return tuple(twin for twin in found if twin is not None)
