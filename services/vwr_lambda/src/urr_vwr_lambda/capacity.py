"""Reading what Tier 2 can absorb: ``GET {queue}/api/v1/queue/{eventId}/capacity``."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from urllib.parse import quote

from urr_vwr_lambda.queueing import CapacityFeed

_MAX_BYTES = 16 * 1024


class CapacityUnavailable(RuntimeError):
    """The feed did not answer, or answered something unusable: advance nothing."""


def fetch_capacity(base_url: str, event_id: str, *, timeout_s: float) -> CapacityFeed:
    if not base_url.startswith(("http://", "https://")):
        raise CapacityUnavailable("the queue URL must be http(s)")
    url = f"{base_url.rstrip('/')}/api/v1/queue/{quote(event_id, safe='')}/capacity"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            payload = json.loads(response.read(_MAX_BYTES + 1)[:_MAX_BYTES])
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise CapacityUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return parse_capacity(payload)


def parse_capacity(payload: object) -> CapacityFeed:
    if not isinstance(payload, dict):
        raise CapacityUnavailable("the capacity answer is not an object")
    try:
        waiting, admitted, capacity = (
            _count(payload, "waiting"),
            _count(payload, "admitted"),
            _count(payload, "capacity"),
        )
        rate = payload.get("admit_per_second", 0)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
            raise ValueError("admit_per_second must be a number")
    except ValueError as exc:
        raise CapacityUnavailable(str(exc)) from exc
    return CapacityFeed(waiting, admitted, capacity, max(0.0, float(rate)))


def _count(payload: dict[str, object], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value
