"""Ending a place or a session: leave, a completed booking, and what follows from it.

The token's ``jti`` is revoked *before* the slot is freed (and again afterwards if a token was
minted in between), so there is no moment when the slot is free for the next waiter while
the old token still opens the booking APIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from urr_queue.entry import describe, revocation_ttl_ms
from urr_queue.events import EventType, QueueEventPublisher, event_record
from urr_queue.metrics import QueueMetrics
from urr_queue.store import Left, QueueStore


class EndReason(StrEnum):
    LEAVE = "leave"  # the user left (place or session)
    COMPLETED = "completed"  # the booking ended (ticket service or reservation-events)


@dataclass(frozen=True)
class SessionEnder:
    store: QueueStore
    publisher: QueueEventPublisher
    metrics: QueueMetrics

    async def end(self, event_id: str, user_id: str, reason: EndReason) -> Left | None:
        """End the user's place (leave only) or admitted session; ``None``: no such event."""
        revoked: set[str] = set()
        only_admitted = reason is EndReason.COMPLETED
        current, now_ms = await self.store.current_token(event_id, user_id)
        if current is not None:
            issued = describe(current)
            ttl_ms = revocation_ttl_ms(issued.expires_at, now_ms)
            left = await self.store.revoke_and_leave(
                event_id, user_id, issued.jti, ttl_ms, only_admitted=only_admitted
            )
            revoked.add(current)
        else:
            left = await self.store.leave(event_id, user_id, only_admitted=only_admitted)
        if left is None:
            return None
        if left.token is not None and left.token not in revoked:
            await self._revoke(user_id, left.token, left.now_ms)  # the leave script's clock
        if left.was != "none":
            self.metrics.left.labels(reason.value, left.was).inc()
            self.publisher.publish(
                event_record(
                    EventType.LEFT,
                    event_id,
                    user_id,
                    at_ms=left.now_ms,
                    position=left.rank + 1 if left.was == "waiting" else None,
                    queueNumber=left.number if left.number >= 0 else None,
                    reason=reason.value,
                    phase=left.was,
                )
            )
        return left

    async def delete_event(self, event_id: str) -> int | None:
        """Delete the event and revoke the tokens of everyone admitted; ``None``: no event."""
        issued = await self.store.delete_event(event_id)
        if issued is None:
            return None
        now_ms = await self._redis_now_ms()
        for user_id, token in issued:
            await self._revoke(user_id, token, now_ms)
        return len(issued)

    async def _revoke(self, user_id: str, token: str, now_ms: int) -> None:
        """Revoke ``token`` until it expires, counted from ``now_ms`` (Redis's clock)."""
        issued = describe(token)
        await self.store.revoke(user_id, issued.jti, revocation_ttl_ms(issued.expires_at, now_ms))

    async def _redis_now_ms(self) -> int:
        seconds, micros = await self.store.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000
