"""OpenAPI 3.1 documents of the public APIs (issue 21, item 4), served at ``/api/docs``.

Served by the queue service because the gateway already routes to it and it is part of the
suite on every deployment; the documents themselves describe four services (Tier 1, Tier 2,
booking, admission log) and are checked against each one's routes by the tests.
"""

from __future__ import annotations

from collections.abc import Callable

from urr_queue.apidocs import booking, log, tier1, tier2
from urr_queue.apidocs.common import Json

#: File name under ``/api/docs/v1/`` -> (title for the viewer, builder).
DOCUMENTS: dict[str, tuple[str, Callable[[], Json]]] = {
    "tier1.json": ("Tier 1: edge waiting room", tier1.build),
    "tier2.json": ("Tier 2: service queue", tier2.build),
    "booking.json": ("Booking", booking.build),
    "log.json": ("Admission log", log.build),
}
