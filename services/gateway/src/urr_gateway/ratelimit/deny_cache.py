"""Subjects known to be over a limit, refused from process memory until their retry time.

Refused requests record nothing and logs only shrink with time, so a subject refused until T
stays refused until T whatever other processes do: answering from memory is exact (up to the
half round trip between Redis computing the wait and this process hearing it, which only
errs towards refusing a little longer). Bounded: least recently refused subjects go first.
"""

from __future__ import annotations

from collections import OrderedDict

from urr_gateway.ratelimit.window import Decision, WindowState


class _Denial:
    """One remembered refusal (a plain slotted class: a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``, four lookups by name per refusal)."""

    __slots__ = ("cost", "decision", "stored_at", "until")

    def __init__(self, until: float, stored_at: float, cost: int, decision: Decision) -> None:
        self.until = until
        self.stored_at = stored_at
        self.cost = cost
        self.decision = decision


class DenyCache:
    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], _Denial] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, subject: str, cost: int, decision: Decision, now: float) -> None:
        """Record a refusal from Redis, valid for ``decision.retry_after_ms`` from ``now``."""
        if self._max_entries == 0 or decision.allowed or decision.retry_after_ms <= 0:
            return
        key = (subject, decision.category)
        until = now + decision.retry_after_ms / 1000
        self._entries[key] = _Denial(until, now, cost, decision)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def lookup(self, subject: str, category: str, cost: int, now: float) -> Decision | None:
        """The refusal still in force for a request of ``cost``, with its timings brought up
        to ``now``; ``None`` when Redis must be asked."""
        key = (subject, category)
        denial = self._entries.get(key)
        if denial is None:
            return None
        if now >= denial.until:
            del self._entries[key]
            return None
        if cost < denial.cost:
            # A cheaper request may fit where the cached one did not.
            return None
        elapsed_ms = int((now - denial.stored_at) * 1000)
        refused = denial.decision
        # Built positionally, not with ``dataclasses.replace`` (which reads the fields of the
        # class and matches keywords on every call: most of a hot subject's refusal cost).
        # ``test_deny_cache_lookup_is_replace_of_the_refusal`` holds the two together.
        windows = tuple(
            [
                WindowState(
                    window.policy,
                    window.limit,
                    window.window_s,
                    window.remaining,
                    max(window.reset_ms - elapsed_ms, 0),
                    max(window.retry_ms - elapsed_ms, 1) if window.retry_ms else 0,
                )
                for window in refused.windows
            ]
        )
        return Decision(
            refused.allowed,
            refused.category,
            refused.limit,
            refused.remaining,
            max(refused.reset_ms - elapsed_ms, 0),
            max(refused.retry_after_ms - elapsed_ms, 1),
            refused.policy,
            refused.degraded,
            "deny_cache",
            windows,
            None,
        )
