"""Tier 1's random draw: check its logged grants against the revealed seed.

With the ``random`` method the Tier-1 advancer draws the order itself, a cycle at a time: it
reads the places numbered ``floor < n <= top``, gives up those whose checks stopped, and grants
the ones with the smallest order keys. It logs every decision (leaves of the event's admission
log, in the order it made them):

- ``{"kind": "tier1-waive", "reason": "abandoned", "event", "epoch", "place", "arrival",
  "key", "lastSeen", "at"}``: the place was given up (its last check at ``lastSeen``, ms);
- ``{"kind": "tier1-grant", "event", "epoch", "seq", "place", "arrival", "key", "draw",
  "floor", "top", "cutoff", "at"}``: the ``seq``-th grant of room run ``epoch``, from the draw
  named ``draw`` (its first grant's sequence) over ``floor < place <= top`` in which places
  last seen before ``cutoff`` (ms) were not drawn;
- ``{"kind": "tier1-waive", "reason": "grant_lost", "event", "epoch", "seq", "place",
  "arrival", "key", "at"}``: grant ``seq`` found its place given up meanwhile;
- ``{"kind": "tier1-pass", "event", "epoch", "place", "arrival", "key", "lastSeen", "draw",
  "floor", "top", "cutoff", "at"}``: the draw named ``draw`` did not consider the
  place although its key is smaller than one it granted: it had stopped checking (last seen
  before ``cutoff``) and the cycle's limit of places given up was reached. It keeps its
  number, and may check again and be drawn later.

``arrival`` is ``SHA-256(request id)`` in hex (a waiter's request id is their credential and
is never published) and ``key`` is ``HMAC-SHA1(seed, arrival)``, its first 13 hex digits read
as an integer. Grants of one draw share ``draw``, ``floor``, ``top``, ``cutoff`` and ``at``.
The audit, per room run (``epoch``), reports each exception with its reason:

- ``key_mismatch``: a leaf's key is not the one the revealed seed gives its ``arrival``;
- ``duplicate_place`` / ``duplicate_seq``: a place decided twice, a sequence used twice;
- ``seq_out_of_order`` / ``missing_seq``: grants are not logged in sequence order, or a
  sequence number is neither granted nor waived (a silent gap);
- ``grant_order``: within one draw, a grant came before one with a smaller key;
- ``passed_over``: a place of the draw's range, still undecided when the draw was made (its
  own grant or waiver is logged later) and still checking (not an ``abandoned`` waiver last
  seen before the draw's ``cutoff``), had a smaller key than one of the draw's grants.

A place that had stopped checking before a draw and was given up later, or that the draw's
``tier1-pass`` names, is not an exception (it was not drawn, and its leaf says when it was last
seen): it is counted as ``explained``. A ``tier1-pass`` whose ``lastSeen`` is not before its
draw's ``cutoff`` is the exception ``pass_while_checking`` (a place still checking was not
drawn).
Numbers inside a draw's range that the log never mentions (a number handed out twice by a
retry, which holds no place) are counted as ``unaccounted``, not exceptions: the log cannot
show they held nobody, and the count says how many there are.

Written from this description, apart from the services' code (``urr_vwr_lambda.grant_log``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from urr_verify.log import TIER1_KINDS
from urr_verify.random_order import KEY_LIMIT, order_key

GRANT, WAIVE, PASS = TIER1_KINDS


@dataclass(frozen=True, slots=True)
class Tier1Exception:
    reason: str
    #: The leaf the exception is about (its index in the log).
    index: int
    detail: str


@dataclass(slots=True)
class Tier1Audit:
    granted: int = 0
    waived: int = 0
    explained: int = 0
    unaccounted: int = 0
    exceptions: list[Tier1Exception] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Leaf:
    index: int
    kind: str
    place: int
    arrival: str
    key: int
    seq: int | None
    reason: str | None
    last_seen: int | None
    draw: tuple[int, int, int, int, int] | None  # (floor, top, cutoff, at, draw) of a grant

    @property
    def rank(self) -> tuple[int, str]:
        return self.key, self.arrival


def _int(entry: Mapping[str, Any], name: str, index: int) -> int:
    value = entry.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"leaf {index} ({entry.get('kind')}) has no whole number {name!r}")
    return value


def _read(index: int, entry: Mapping[str, Any]) -> _Leaf:
    kind = entry["kind"]
    arrival = entry.get("arrival")
    if not isinstance(arrival, str) or len(arrival) != 64:
        raise ValueError(f"leaf {index} ({kind}) has no arrival alias")
    key = _int(entry, "key", index)
    if key >= KEY_LIMIT:
        raise ValueError(f"leaf {index} ({kind}) has a key above 52 bits")
    place = _int(entry, "place", index)
    if kind in (GRANT, PASS):
        floor, top, cutoff, at, first = (
            _int(entry, n, index) for n in ("floor", "top", "cutoff", "at", "draw")
        )
        draw = (floor, top, cutoff, at, first)
        if kind == PASS:
            last_seen = _int(entry, "lastSeen", index)
            return _Leaf(index, kind, place, arrival, key, None, None, last_seen, draw)
        seq = _int(entry, "seq", index)
        return _Leaf(index, kind, place, arrival, key, seq, None, None, draw)
    reason = entry.get("reason")
    if reason == "abandoned":
        last_seen = _int(entry, "lastSeen", index)
        return _Leaf(index, kind, place, arrival, key, None, reason, last_seen, None)
    if reason == "grant_lost":
        seq = _int(entry, "seq", index)
        return _Leaf(index, kind, place, arrival, key, seq, reason, None, None)
    raise ValueError(f"leaf {index} is a Tier-1 waiver with an unknown reason {reason!r}")


def audit_tier1(entries: Sequence[tuple[int, Mapping[str, Any]]], seed: bytes) -> Tier1Audit:
    """Audit the Tier-1 leaves ``(log index, leaf)`` of one event, in log order."""
    runs: dict[int, list[_Leaf]] = {}
    for index, entry in entries:
        runs.setdefault(_int(entry, "epoch", index), []).append(_read(index, entry))
    report = Tier1Audit()
    for epoch in sorted(runs):
        _audit_run(runs[epoch], seed, report, epoch)
    return report


def _audit_run(leaves: list[_Leaf], seed: bytes, report: Tier1Audit, epoch: int) -> None:
    decided: dict[int, _Leaf] = {}  # place -> the leaf that first decided it
    for leaf in leaves:
        report.granted += leaf.kind == GRANT
        report.waived += leaf.kind == WAIVE
        expected = order_key(seed, leaf.arrival)
        if leaf.key != expected:
            report.exceptions.append(
                Tier1Exception(
                    "key_mismatch",
                    leaf.index,
                    f"place {leaf.place} carries key {leaf.key}; the seed gives its arrival "
                    f"{expected}",
                )
            )
        if leaf.kind == PASS or leaf.reason == "grant_lost":
            continue  # no decision on the place (a lost grant spends only its sequence)
        if leaf.place in decided:
            report.exceptions.append(
                Tier1Exception(
                    "duplicate_place",
                    leaf.index,
                    f"place {leaf.place} was already decided by leaf {decided[leaf.place].index}",
                )
            )
        else:
            decided[leaf.place] = leaf
    _audit_sequences(leaves, report, epoch)
    _audit_draws(leaves, decided, report)


def _audit_sequences(leaves: list[_Leaf], report: Tier1Audit, epoch: int) -> None:
    """Grant sequences are used once, logged in order, and none is left out."""
    flag = report.exceptions.append
    seqs: set[int] = set()
    last_grant_seq = 0
    for leaf in leaves:
        if leaf.seq is None:
            continue
        if leaf.seq in seqs:
            flag(Tier1Exception("duplicate_seq", leaf.index, f"sequence {leaf.seq} again"))
        seqs.add(leaf.seq)
        if leaf.kind == GRANT and leaf.seq < last_grant_seq:
            flag(
                Tier1Exception(
                    "seq_out_of_order",
                    leaf.index,
                    f"grant {leaf.seq} is logged after grant {last_grant_seq}",
                )
            )
        if leaf.kind == GRANT:
            last_grant_seq = max(last_grant_seq, leaf.seq)
    missing = sorted(set(range(1, max(seqs, default=0) + 1)) - seqs)
    if missing:
        flag(
            Tier1Exception(
                "missing_seq",
                leaves[-1].index,
                f"room run {epoch}: sequences {missing[:10]} are neither granted nor "
                f"waived ({len(missing)} in all)",
            )
        )


def _draws(leaves: list[_Leaf]) -> list[list[_Leaf]]:
    """The grants grouped by the draw they came from (consecutive, same range and times)."""
    draws: list[list[_Leaf]] = []
    for leaf in leaves:
        if leaf.kind != GRANT:
            continue
        if draws and draws[-1][-1].draw == leaf.draw:
            draws[-1].append(leaf)
        else:
            draws.append([leaf])
    return draws


@dataclass(slots=True)
class _Seen:
    """Places the draws met: not in the log, explained by their waiver, passed over."""

    unaccounted: set[int] = field(default_factory=set)
    explained: set[int] = field(default_factory=set)
    passed_over: set[int] = field(default_factory=set)


def _audit_draws(leaves: list[_Leaf], decided: dict[int, _Leaf], report: Tier1Audit) -> None:
    """Each draw granted the smallest keys among the places still waiting in its range."""
    seen = _Seen()
    passes: dict[tuple[int, int, int, int, int] | None, dict[int, _Leaf]] = {}
    for leaf in leaves:
        if leaf.kind == PASS:
            passes.setdefault(leaf.draw, {})[leaf.place] = leaf
            if (leaf.last_seen or 0) >= (leaf.draw or (0, 0, 0, 0, 0))[2]:
                report.exceptions.append(
                    Tier1Exception(
                        "pass_while_checking",
                        leaf.index,
                        f"place {leaf.place} was not drawn as quiet, but was last seen at "
                        f"{leaf.last_seen}, not before the draw's cutoff",
                    )
                )
    for grants in _draws(leaves):
        for earlier, later in itertools.pairwise(grants):
            if later.rank < earlier.rank:
                report.exceptions.append(
                    Tier1Exception(
                        "grant_order",
                        later.index,
                        f"grant {later.seq} (key {later.key}) came after grant {earlier.seq} "
                        f"(key {earlier.key}) in the same draw",
                    )
                )
        _audit_waiting(grants, decided, passes.get(grants[0].draw, {}), seen, report)
    report.unaccounted += len(seen.unaccounted)
    report.explained += len(seen.explained)


def _audit_waiting(
    grants: list[_Leaf],
    decided: dict[int, _Leaf],
    passed: dict[int, _Leaf],
    seen: _Seen,
    report: Tier1Audit,
) -> None:
    """No place still waiting in the draw's range had a smaller key than its largest grant."""
    floor, top, cutoff, _, _ = grants[0].draw or (0, 0, 0, 0, 0)
    first = grants[0].index
    largest = max(grants, key=lambda grant: grant.rank)
    granted_here = {grant.index for grant in grants}
    for place in range(floor + 1, top + 1):
        other = decided.get(place)
        if other is None:
            seen.unaccounted.add(place)
            continue
        if other.index < first or other.index in granted_here or other.rank > largest.rank:
            continue  # decided before this draw, drawn in it, or behind its grants
        quiet = other.reason == "abandoned" and (other.last_seen or 0) < cutoff
        if quiet or place in passed:
            seen.explained.add(place)  # not checking any more: not drawn
            continue
        if place in seen.passed_over:
            continue  # named once, at the first draw that passed it over
        seen.passed_over.add(place)
        report.exceptions.append(
            Tier1Exception(
                "passed_over",
                other.index,
                f"place {place} (key {other.key}) was waiting in the draw of grant "
                f"{largest.seq} (key {largest.key}), which has the larger key",
            )
        )
