"""The gates an assign passes before it may take a new place (issue 15, 3a and 5).

``guarded_assign`` wraps the assign (``urr_vwr_lambda.api.assign_place``):

1. the event's gate settings (a warm container's copy, ``config_cache_s`` old at most);
2. nothing to enforce (a logged-in caller of an event without codes): straight to the assign;
3. the code's shape is checked before any I/O (missing or malformed: refused, nothing read);
4. a request that already holds a current place is a repeat: straight to the assign (200);
5. one use of the code is taken (conditional update), then, for an anonymous caller, a slot
   of its client address (compare-and-set of the client item, pruning places that are gone);
6. the assign; if it took no new place (a repeat, a lost race, the room closed, an error)
   the use and the slot are given back, so a refusal never leaves anything written.

A code refusal is ``403`` naming why; a client over its cap is ``429`` with ``Retry-After``
(the time after which a place its waiter stopped checking counts as given up).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from urr_vwr_lambda.gates import codes
from urr_vwr_lambda.gates.clients import client_address
from urr_vwr_lambda.gates.origin import OriginSecrets, came_through_distribution, origin_problem
from urr_vwr_lambda.gates.store import (
    ClientHolders,
    CodeRefused,
    GateConfig,
    GateStore,
    StaleClient,
)
from urr_vwr_lambda.problem import VwrProblem

if TYPE_CHECKING:
    from urr_vwr_lambda.settings import GateSettings
    from urr_vwr_lambda.store import EventState, Place

AssignResult = tuple[int, "Place", "EventState"]
Assign = Callable[[], AssignResult]

#: A slot whose place is not written yet counts as held this long (an assign's longest run,
#: the function's timeout, with room to spare): its assign may still be writing it.
PENDING_GRACE_S = 60
#: Attempts at the client item's compare-and-set when the same client assigns concurrently.
_CLIENT_ATTEMPTS = 5

CODE_DETAILS = {
    "access_code_required": "this sale needs an access code: enter the code you were given",
    "access_code_invalid": "this access code is not valid for this event",
    "access_code_revoked": "this access code has been withdrawn",
    "access_code_exhausted": "this access code has been used as many times as it allows",
    "access_code_login_required": "this access code belongs to an account: log in to use it",
    "access_code_other_account": "this access code belongs to another account",
}


def code_problem(reason: str) -> VwrProblem:
    return VwrProblem(403, reason, CODE_DETAILS[reason])


class Gates:
    """A container's gate state: the adapter, settings copies, the origin secret cache."""

    def __init__(
        self,
        settings: GateSettings,
        store: GateStore,
        *,
        origin: OriginSecrets | None,
        retry_after_s: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.store = store
        self.origin = origin
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._configs: dict[str, tuple[float, GateConfig | None]] = {}

    def config(self, event_id: str) -> GateConfig | None:
        ttl = self.settings.config_cache_s
        now = self._clock()
        with self._lock:
            cached = self._configs.get(event_id)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        found = self.store.get_config(event_id)
        if ttl > 0 and found is not None:  # an event made a moment later is seen at once
            with self._lock:
                if len(self._configs) > 10_000:
                    self._configs.clear()
                self._configs[event_id] = (now, found)
        return found

    def forget(self, event_id: str) -> None:
        with self._lock:
            self._configs.pop(event_id, None)

    def origin_problem(self, event: Mapping[str, Any]) -> VwrProblem | None:
        return origin_problem(self.origin, self.settings.origin.header, event)

    def places_per_client(self, config: GateConfig) -> int:
        if config.places_per_client is not None:
            return config.places_per_client
        return self.settings.places_per_client


def guarded_assign(
    gates: Gates,
    event: Mapping[str, Any],
    event_id: str,
    request_id: str,
    user_id: str | None,
    body: Mapping[str, Any],
    assign: Assign,
    *,
    now_s: int,
) -> AssignResult:
    config = gates.config(event_id)
    if config is None:
        return assign()  # no such event: the assign answers 404
    cap = gates.places_per_client(config) if user_id is None else 0
    digest, missing_code = _code_of(config, body)
    if not cap and digest is None and not missing_code:
        return assign()
    store = gates.store
    key: str | None = None
    if cap:
        via_cloudfront = came_through_distribution(
            gates.origin, gates.settings.origin.header, event
        )
        key = client_address(event, via_distribution=via_cloudfront)
    # The epoch is read fresh (a reset changes it; the cached settings may be older).
    epoch, mine, seen, claim = store.read_assign_view(event_id, request_id, key, user_id)
    if epoch is None or (mine is not None and _current(mine, epoch, now_s)):
        return assign()  # gone meanwhile (404), or a repeat: the place stands as it is
    if claim is not None and _holds_elsewhere(store, event_id, claim, epoch, now_s):
        return assign()  # the account's place in another tab: answered, nothing taken
    if missing_code:
        raise code_problem("access_code_required")  # (a repeat above needs none)
    undo: list[Callable[[], None]] = []
    try:
        if digest is not None:
            try:
                store.consume_code(event_id, digest, user_id)
            except CodeRefused as refused:
                raise code_problem(refused.reason) from refused
            undo.append(lambda: store.refund_code(event_id, digest))
        if key is not None and seen is not None:
            _claim_client_slot(gates, event_id, epoch, seen, request_id, cap, now_s=now_s)
            client = key
            undo.append(lambda: store.release_client(event_id, client, request_id))
        result = assign()
    except BaseException:
        _undo(undo)
        raise
    if result[0] != 201:
        _undo(undo)
    return result


def _undo(steps: list[Callable[[], None]]) -> None:
    """Give back what was taken; one failing step does not stop the others (a use not
    given back only errs on the strict side)."""
    for step in reversed(steps):
        try:
            step()
        except (ClientError, BotoCoreError):
            logging.getLogger(__name__).warning("gate_undo_failed", exc_info=True)


def _code_of(config: GateConfig, body: Mapping[str, Any]) -> tuple[str | None, bool]:
    """``(stored form of the code sent, whether one is required but missing)``."""
    if not config.access_code_required:
        return None, False
    typed = body.get("accessCode")
    if typed is None or typed == "":
        return None, True
    return _code_digest(config, typed), False


def _code_digest(config: GateConfig, typed: object) -> str:
    """The stored form of a typed code; a malformed one is refused before any I/O."""
    normalised = codes.normalise(typed)
    if normalised is None or config.salt is None:
        raise code_problem("access_code_invalid")
    return codes.code_hash(config.salt, normalised)


def _current(item: Mapping[str, Any], epoch: int, now_s: int) -> bool:
    """A place item of this run, not expired, not given up."""
    item_epoch = int(item.get("epoch", {}).get("N", 1))
    ttl = int(item.get("ttl", {}).get("N", 0))
    return item_epoch == epoch and ttl > now_s and "abandoned" not in item


def _holds_elsewhere(
    store: GateStore, event_id: str, claim: Mapping[str, Any], epoch: int, now_s: int
) -> bool:
    """Whether a logged-in user's claim names a current place (read to make sure)."""
    if not _current(claim, epoch, now_s):
        return False
    owner = claim.get("ownerRequestId", {}).get("S")
    if not owner:
        return False
    place = store.places(event_id, [owner]).get(owner)
    return place is not None and _current(place, epoch, now_s)


def _live(item: Mapping[str, Any] | None, epoch: int, now_s: int) -> bool:
    """Whether a holder's place still holds a spot in the line (not admitted, not gone)."""
    return item is not None and _current(item, epoch, now_s) and "admittedAt" not in item


def _claim_client_slot(
    gates: Gates,
    event_id: str,
    epoch: int,
    seen: ClientHolders,
    request_id: str,
    cap: int,
    *,
    now_s: int,
) -> None:
    """Add ``request_id`` to the client's holders unless it already holds ``cap`` live places."""
    store = gates.store
    for attempt in range(_CLIENT_ATTEMPTS):
        if attempt:
            seen = store.read_client(event_id, seen.key)
        holders = {rid: h for rid, h in seen.holders.items() if h[0] == epoch}
        if request_id not in holders and len(holders) >= cap:
            places = store.places(event_id, list(holders))
            holders = {
                rid: h
                for rid, h in holders.items()
                if _live(places.get(rid), epoch, now_s)
                or (rid not in places and now_s - h[1] < PENDING_GRACE_S)
            }
        if request_id not in holders and len(holders) >= cap:
            raise too_many_places(cap, gates.retry_after_s)
        holders[request_id] = (epoch, now_s)
        try:
            store.write_client(event_id, seen, holders, now_s=now_s)
        except StaleClient:
            continue
        return
    raise VwrProblem(
        429,
        "client_busy",
        "several assigns from this address ran at once; try again shortly",
        headers={"Retry-After": "1"},
    )


def too_many_places(cap: int, retry_after_s: int) -> VwrProblem:
    return VwrProblem(
        429,
        "too_many_places",
        f"this address already holds {cap} place(s) in this line; one frees when its "
        "visitor is let in or stops waiting",
        headers={"Retry-After": str(retry_after_s)},
        limit=cap,
    )
