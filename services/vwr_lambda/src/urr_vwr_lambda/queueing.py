"""Pure waiting-room arithmetic: people ahead, ETA, poll pacing, Tier-2 headroom, the walk.

No I/O here: the handlers read DynamoDB and the capacity feed, then ask these functions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from urr_common.fairness import order_key

#: Below this admission rate the ETA is "unknown" rather than an absurd number.
_MIN_RATE_PER_S = 1e-3
#: ETAs are capped (about 115 days): nothing beyond that is a meaningful promise.
_MAX_ETA_S = 10_000_000


def people_ahead(position: int, serving_counter: int) -> int:
    """Waiters with a smaller number still to be served (0 once admitted)."""
    return max(0, position - serving_counter - 1)


def is_admitted(position: int, serving_counter: int) -> bool:
    return position <= serving_counter


def eta_seconds(ahead: int, admit_per_s: float) -> int:
    """Seconds until this waiter is served at ``admit_per_s`` (its own turn included)."""
    if ahead <= 0:
        return 0
    if not admit_per_s > _MIN_RATE_PER_S:  # also catches NaN
        return -1
    return min(_MAX_ETA_S, math.ceil((ahead + 1) / admit_per_s))


#: Seconds after which a cycle's measured admission rate weighs half in the smoothed rate.
RATE_HALF_LIFE_S = 10.0


def smoothed_rate(previous: float | None, measured: float, interval_s: float) -> float:
    """The admission rate shown as ETA: recent cycles weigh more, by time rather than count.

    The weight of the newest cycle depends on how long it lasted, so the ETA responds as fast
    with 2 s cycles as with 10 s ones, and a short cycle's noise counts for less.
    """
    if previous is None or not math.isfinite(previous):
        return measured
    weight = 1.0 - math.pow(0.5, max(0.0, interval_s) / RATE_HALF_LIFE_S)
    return weight * measured + (1.0 - weight) * previous


def poll_after_seconds(eta_s: int, ahead: int, *, min_s: int, max_s: int) -> int:
    """How long the page waits before its next check: soon when close, rarely when far.

    Half the ETA: each check halves the time left, so a waiter checks about log2(ETA / min_s)
    times on the way and every ``min_s`` only in the last few seconds, whatever the line's
    length. Even with the page's +20 % jitter (0.6 of the ETA) a check lands before the
    waiter's turn while the line moves less than 1.6 times faster than the rate the ETA
    used, so a waiter learns of its turn within ``min_s`` as before. With a quarter of the
    ETA (before issue 22) a waiter 25 s from its turn checked 9 times, 7 of them in its last
    15 s; now 5 (60 s: 12 and now 6). An unknown ETA falls back to bands by distance.
    """
    if ahead <= 0:
        return min_s
    if eta_s < 0:
        band = 5 if ahead <= 100 else 10 if ahead <= 1000 else 20 if ahead <= 10_000 else max_s
        return max(min_s, min(max_s, band))
    return max(min_s, min(max_s, eta_s // 2))


@dataclass(frozen=True)
class CapacityFeed:
    """Tier 2's report for one event (``GET /api/v1/queue/{eventId}/capacity``)."""

    waiting: int
    admitted: int
    capacity: int
    admit_per_second: float

    def absorbable(self, interval_s: float) -> int:
        """Waiters Tier 2 can take before the next cycle.

        Its free admission slots now, plus what its admission rate clears in one interval,
        minus whoever already waits in its own queue: Tier 2's queue stays at about one
        interval's worth, so it never idles and never floods.
        """
        free_slots = max(0, self.capacity - self.admitted)
        cleared = math.floor(max(0.0, self.admit_per_second) * max(0.0, interval_s))
        return max(0, free_slots + cleared - self.waiting)


@dataclass(frozen=True)
class PositionRow:
    """One place in line, as the advancer read it by its number."""

    request_id: str
    position: int
    last_seen: int
    admitted: bool = False
    #: Random method: the advancer already chose this place.
    granted: bool = False
    #: Taken during the pre-queue: let in at its check to join Tier 2's roster.
    prequeue: bool = False

    def abandoned_by(self, cutoff: int) -> bool:
        """Its checks stopped before ``cutoff`` (epoch seconds) and it never got in."""
        return not self.admitted and self.last_seen < cutoff


@dataclass(frozen=True)
class WalkResult:
    serving_counter: int
    live: int
    skipped: int
    examined: int


def walk_positions(
    rows: Iterable[PositionRow],
    *,
    serving_counter: int,
    budget: int,
    cutoff: int,
    max_skips: int,
    mark_abandoned: Callable[[PositionRow], bool],
) -> WalkResult:
    """Move past up to ``budget`` live places in position order, skipping abandoned ones.

    ``rows`` come in ascending order above the serving counter and at or below
    ``nextPosition``. An abandoned place is skipped only once ``mark_abandoned`` succeeded (a
    conditional write that fails when the waiter checked in meanwhile: that waiter then
    counts as live). A number with no row (left unused by a retry or a racing assign) costs
    nothing. The counter ends on the last place passed, never beyond the rows seen, so the
    newest places are never jumped; a number whose line item is still being written while a
    later one is already read is passed with it, and its waiter gets in at the next check
    without counting against the budget (a window of one or two DynamoDB round trips).
    """
    live = skipped = examined = 0
    new_serving = serving_counter
    if budget <= 0:
        return WalkResult(serving_counter, 0, 0, 0)
    for row in rows:
        if row.position <= new_serving:
            continue
        examined += 1
        if row.prequeue:
            # Let in at its check during the pre-queue (Tier 2's shuffle orders it): its
            # number is passed, never counted against the budget nor given up.
            new_serving = row.position
            continue
        if row.abandoned_by(cutoff):
            if skipped >= max_skips:
                break
            if mark_abandoned(row):
                skipped += 1
                new_serving = row.position
                continue
        live += 1
        new_serving = row.position
        if live >= budget:
            break
    return WalkResult(new_serving, live, skipped, examined)


def arrival_alias(request_id: str) -> str:
    """The public name of a Tier-1 place in the random draw: ``SHA-256(request id)`` in hex.

    The request id is the waiter's credential (whoever holds it collects the pass), so the
    admission log cannot publish it; the alias is published instead, and the order key is
    drawn from the alias, so anyone holding the revealed seed recomputes every key from the
    log alone, and a waiter checks their own alias from their request id.
    """
    return hashlib.sha256(request_id.encode("utf-8")).hexdigest()


def draw_key(seed: bytes, request_id: str) -> tuple[int, str]:
    """Where a place stands in the random draw: its order key, equal keys by alias."""
    alias = arrival_alias(request_id)
    return order_key(seed, alias), alias


@dataclass(frozen=True)
class RandomPick:
    """One random-method cycle: places granted (in grant order), given up, the new floor,
    and the places not drawn because they had stopped checking but could not be given up
    this cycle (the skip limit): ``quiet``, in number order."""

    granted: list[PositionRow]
    skipped: int
    line_floor: int
    quiet: tuple[PositionRow, ...] = ()


def pick_random(
    rows: Iterable[PositionRow],
    *,
    seed: bytes,
    line_floor: int,
    budget: int,
    cutoff: int,
    max_skips: int,
    mark_abandoned: Callable[[PositionRow], bool],
) -> RandomPick:
    """Grant up to ``budget`` waiting places, smallest order key first (``urr_common.fairness``,
    drawn from each place's ``arrival_alias``).

    ``rows`` are the live places above ``line_floor`` in number order. A waiter whose checks
    stopped is given up first (as the FIFO walk does), so a no-show never takes a grant. The
    floor then moves up to just below the lowest place still waiting (or to the last place
    read when none waits), never past a number not read: a place whose line item was still
    being written is below the floor only if a later one was read, and its check lets it in.
    """
    waiting: list[PositionRow] = []
    quiet: list[PositionRow] = []  # stopped checking, not given up yet (skip limit): not drawn
    last_read = line_floor
    skipped = 0
    for row in rows:
        last_read = max(last_read, row.position)
        if row.granted or row.admitted:
            continue
        if row.abandoned_by(cutoff):
            if skipped >= max_skips:
                quiet.append(row)
                continue
            if mark_abandoned(row):
                skipped += 1
                continue
            # The mark failed: the waiter checked in meanwhile, so it still waits.
        waiting.append(row)
    drawn = sorted(waiting, key=lambda row: draw_key(seed, row.request_id))
    granted = drawn[: max(0, budget)]
    chosen = {row.position for row in granted}
    still = [row.position for row in quiet]
    still += [row.position for row in waiting if row.position not in chosen]
    floor = min(still) - 1 if still else last_read
    return RandomPick(
        granted=granted, skipped=skipped, line_floor=max(line_floor, floor), quiet=tuple(quiet)
    )


def strong_etag(body: object) -> str:
    """A strong validator over the canonical JSON of ``body``."""
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f'"{digest[:32]}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` semantics (RFC 9110 §13.1.2): weak comparison, ``*`` matches all."""
    if not if_none_match:
        return False
    candidates = [part.strip() for part in if_none_match.split(",")]
    opaque = etag.removeprefix("W/")
    return any(c == "*" or c.removeprefix("W/") == opaque for c in candidates)
