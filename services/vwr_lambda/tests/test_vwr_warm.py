"""What a warm container spares DynamoDB: checks answered from its copies, still correct.

Counts the real calls the runtime's boto3 client makes (botocore's ``before-call`` event)
against the session's moto server.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from urr_common.settings import SettingsError, load_settings
from urr_vwr_lambda.settings import VwrSettings
from urr_vwr_lambda.store import EventState, Place
from urr_vwr_lambda.warm import EventCache, PlaceCache


def _calls(vwr: Any) -> Counter[str]:
    """DynamoDB operations the harness's runtime makes from now on, by name."""
    seen: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        seen[model.name] += 1

    vwr.runtime.dynamodb.meta.events.register("before-call.dynamodb", count)
    return seen


def _state(event_id: str = "e", serving: int = 0) -> EventState:
    return EventState(event_id, True, 10, serving, 5, 0, 1, None)


def _place(request_id: str, *, abandoned: bool = False) -> Place:
    return Place("e", request_id, 3, 1, None, 0, 10**10, abandoned, None, None)


def test_the_event_cache_forgets_after_its_ttl() -> None:
    now = itertools.count()
    cache = EventCache(ttl_s=2, clock=lambda: float(next(now)))
    cache.put(_state())  # t=0
    assert cache.get("e") is not None  # t=1
    assert cache.get("e") is None  # t=2: as old as the ttl
    off = EventCache(ttl_s=0, clock=lambda: 0.0)
    off.put(_state())
    assert off.get("e") is None


def test_the_place_cache_is_bounded_and_never_keeps_an_abandoned_place() -> None:
    cache = PlaceCache(size=2)
    cache.put(_place("a"))
    cache.put(_place("b"))
    assert cache.get("e", "a") is not None  # a is now the most recently used
    cache.put(_place("c"))
    assert cache.get("e", "b") is None
    assert cache.get("e", "a") is not None
    assert cache.get("e", "c") is not None
    cache.put(_place("d", abandoned=True))
    assert cache.get("e", "d") is None
    assert len(cache) == 2


def test_repeated_checks_are_answered_without_reading_dynamodb(vwr: Any) -> None:
    vwr.runtime.settings.poll.counters_cache_s = 60.0
    vwr.runtime.__dict__.pop("event_cache", None)
    vwr.open_event("warm")
    request_id = str(uuid.uuid4())
    vwr.assign("warm", request_id)
    calls = _calls(vwr)
    first = vwr.check("warm", request_id)
    assert first.body["admitted"] is False
    # The container that assigned the place knows it, and the counters its assign read for
    # the proof-of-work gate's settings (pow_gate).
    assert calls == {}
    for _ in range(5):
        assert vwr.check("warm", request_id).body["position"] == first.body["position"]
    assert calls == {}, "checks within the intervals read nothing"
    # Another container reads the place and the counters once, in one call.
    vwr.runtime.__dict__.pop("place_cache")
    vwr.runtime.__dict__.pop("event_cache")
    vwr.check("warm", request_id)
    vwr.check("warm", request_id)
    assert calls == {"BatchGetItem": 1}
    # The lastSeen write is still made once its interval has passed.
    vwr.clock.advance(vwr.settings.poll.last_seen_write_interval_s)
    vwr.check("warm", request_id)
    assert calls["UpdateItem"] == 1


def test_a_cached_place_given_up_meanwhile_is_still_refused(vwr: Any) -> None:
    """The advancer marks a silent place abandoned; the stale cached copy must not hide it."""
    vwr.open_event("gone")
    silent = str(uuid.uuid4())
    vwr.assign("gone", silent)
    assert vwr.check("gone", silent).status == 200  # now cached, not abandoned
    vwr.clock.advance(vwr.settings.advancer.abandon_after_s + 10)
    vwr.capacity.for_event("gone").capacity = 10
    vwr.capacity.for_event("gone").admit_per_second = 1.0
    from urr_vwr_lambda.advancer import run_cycle

    run_cycle(vwr.runtime, interval_s=10)
    answer = vwr.check("gone", silent)
    assert (answer.status, answer.body["code"]) == (410, "position_abandoned")


def test_an_admitted_check_stores_one_token_and_then_reads_nothing_more(vwr: Any) -> None:
    vwr.open_event("in")
    request_id = str(uuid.uuid4())
    vwr.assign("in", request_id)
    vwr.admin("POST", "in/advance", {"by": 1})
    calls = _calls(vwr)
    first = vwr.check("in", request_id)
    assert first.body["admitted"] is True
    again = vwr.check("in", request_id)
    assert again.body["token"] == first.body["token"]
    assert calls["UpdateItem"] == 1, "the token is recorded once, then served from the copy"


def test_a_claim_left_without_its_place_is_taken_over(vwr: Any) -> None:
    """A crash between the claim write and the place write must not lock the user out.

    While the claim is young its place may still be in flight (another tab writing it): the
    assign answers 409 and the tab retries; once it is older, the claim is taken over."""
    vwr.open_event("crash")
    orphan = str(uuid.uuid4())
    store = vwr.runtime.store
    token = vwr.user_token("u-7")
    young = str(uuid.uuid4())
    assert store._put_claim(
        "crash", young, "u-8", position=1, epoch=1, now_s=vwr.runtime.now_s(), stale_owner=None
    )
    in_flight = vwr.assign(
        "crash", str(uuid.uuid4()), Authorization=f"Bearer {vwr.user_token('u-8')}"
    )
    assert (in_flight.status, in_flight.body["code"]) == (409, "assign_conflict")
    crashed_at = vwr.runtime.now_s() - 11
    assert store._put_claim(
        "crash", orphan, "u-7", position=2, epoch=1, now_s=crashed_at, stale_owner=None
    )
    answer = vwr.assign("crash", str(uuid.uuid4()), Authorization=f"Bearer {token}")
    assert answer.status == 201
    claim = store.get_claim("crash", "u-7")
    assert claim is not None
    assert claim.owner_request_id == answer.body["requestId"]


def test_settings_refuse_a_write_interval_that_would_abandon_live_waiters() -> None:
    with pytest.raises(SettingsError, match="abandon_after_s"):
        load_settings(
            VwrSettings,
            poll={"last_seen_write_interval_s": 100, "max_s": 30},
            advancer={"abandon_after_s": 120},
        )


def test_the_counters_copy_is_refreshed_after_its_ttl_however_often_it_is_used(vwr: Any) -> None:
    """Checks answered from the copy must not keep it young: the crowd would never get in."""
    # Long enough that the advance between two checks fits inside it on a loaded machine
    # (0.3 s did not, once, in CI), short enough to wait out.
    vwr.runtime.settings.poll.counters_cache_s = 1.5
    vwr.runtime.__dict__.pop("event_cache", None)
    vwr.open_event("fresh")
    request_id = str(uuid.uuid4())
    vwr.assign("fresh", request_id)
    assert vwr.check("fresh", request_id).body["admitted"] is False
    vwr.admin("POST", "fresh/advance", {"by": 1})
    assert vwr.check("fresh", request_id).body["admitted"] is False, "served from the copy"
    started = time.monotonic()
    while not vwr.check("fresh", request_id).body["admitted"]:
        assert time.monotonic() - started < 6.0, "checks in a row kept the copy from expiring"
        time.sleep(0.02)


def _fresh_copy_without_the_place(vwr: Any, event_id: str) -> str:
    """A place assigned, then a container that holds the counters copy but not the place (the
    check lands on one that did not assign it)."""
    vwr.runtime.settings.poll.counters_cache_s = 60.0
    vwr.runtime.__dict__.pop("event_cache", None)
    vwr.open_event(event_id)
    request_id = str(uuid.uuid4())
    assert vwr.assign(event_id, request_id).status == 201
    vwr.runtime.__dict__.pop("place_cache")
    assert vwr.runtime.event_cache.get(event_id) is not None
    return request_id


def test_a_place_not_held_is_read_alone_while_the_counters_copy_is_fresh(vwr: Any) -> None:
    """One GetItem of the place, not the batched read of both; the same answer as before; the
    copy keeps its age (it still refreshes after its ttl)."""
    request_id = _fresh_copy_without_the_place(vwr, "alone")
    aged_at = vwr.runtime.event_cache._items["alone"][0]
    calls = _calls(vwr)
    answer = vwr.check("alone", request_id)
    assert answer.status == 200
    assert (answer.body["admitted"], answer.body["position"]) == (False, 1)
    assert calls == {"GetItem": 1}
    assert vwr.runtime.event_cache._items["alone"][0] == aged_at
    vwr.check("alone", request_id)
    assert calls == {"GetItem": 1}, "then the place is the container's copy"


def test_a_request_id_without_a_place_is_still_refused_from_the_counters_copy(vwr: Any) -> None:
    _fresh_copy_without_the_place(vwr, "nobody")
    calls = _calls(vwr)
    answer = vwr.check("nobody", str(uuid.uuid4()))
    assert (answer.status, answer.body["code"]) == (404, "position_not_found")
    assert calls == {"GetItem": 1}


def test_a_place_read_alone_that_was_given_up_or_admitted_answers_as_before(vwr: Any) -> None:
    """The place read alone is the stored row: an abandoned mark refuses it, an admission
    signs and stores one token (the copy's counters let it in)."""
    gone = _fresh_copy_without_the_place(vwr, "rowstate")
    store = vwr.runtime.store
    place = store.get_place("rowstate", gone)
    assert place is not None
    state = store.get_event("rowstate", consistent=True)
    assert state is not None
    row = next(iter(store.places_above(state, upto=1, now_s=vwr.runtime.now_s())))
    assert store.mark_abandoned(state, row, cutoff_s=vwr.runtime.now_s() + 1)
    answer = vwr.check("rowstate", gone)
    assert (answer.status, answer.body["code"]) == (410, "position_abandoned")
    admitted = str(uuid.uuid4())
    assert vwr.assign("rowstate", admitted).status == 201
    vwr.admin("POST", "rowstate/advance", {"by": 2})
    vwr.runtime.__dict__.pop("place_cache")
    vwr.runtime.event_cache.forget("rowstate")
    assert vwr.check("rowstate", str(uuid.uuid4())).status == 404  # copies the counters
    calls = _calls(vwr)
    first = vwr.check("rowstate", admitted)
    assert first.body["admitted"] is True
    assert calls == {"GetItem": 1, "UpdateItem": 1}
    assert vwr.check("rowstate", admitted).body["token"] == first.body["token"]


def test_a_place_of_a_later_run_than_the_counters_copy_reads_the_counters_again(
    vwr: Any,
) -> None:
    """After a reset, a container whose copy predates it must not refuse a new place as being
    of another run: the place's later epoch sends it to read the counters."""
    _fresh_copy_without_the_place(vwr, "rerun")
    stale = vwr.runtime.event_cache.get("rerun")
    assert stale is not None
    assert vwr.admin("POST", "rerun/reset").status == 200
    request_id = str(uuid.uuid4())
    assert vwr.assign("rerun", request_id).status == 201
    vwr.runtime.__dict__.pop("place_cache")
    vwr.runtime.event_cache.put(stale)
    calls = _calls(vwr)
    answer = vwr.check("rerun", request_id)
    assert answer.status == 200, answer.body
    assert answer.body["position"] == 1
    assert calls == {"GetItem": 2}
    fresh = vwr.runtime.event_cache.get("rerun")
    assert fresh is not None
    assert fresh.epoch == stale.epoch + 1
