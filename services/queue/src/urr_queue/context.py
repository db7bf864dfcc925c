"""What the handlers share: built once per application when its Redis client opens."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from urr_queue.entry import EntryTokens
from urr_queue.events import QueueEventPublisher
from urr_queue.metrics import QueueMetrics
from urr_queue.sessions import SessionEnder
from urr_queue.settings import QueueSettings
from urr_queue.store import QueueStore
from urr_queue.tier1 import Tier1Checker


@dataclass(frozen=True)
class QueueContext:
    settings: QueueSettings
    store: QueueStore
    tokens: EntryTokens
    tier1: Tier1Checker
    publisher: QueueEventPublisher
    metrics: QueueMetrics
    ender: SessionEnder


QUEUE_CONTEXT = web.AppKey("urr_queue_context", QueueContext)
