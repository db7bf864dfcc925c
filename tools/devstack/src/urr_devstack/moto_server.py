"""``python -m urr_devstack.moto_server -H <host> -p <port>``: moto's server, as ``moto_server``
runs it, without two costs moto 5 pays on every request.

- werkzeug's access log: a formatted line per request through ``logging`` (the stack's moto
  answers every booking command, poll and delete of a crowd);
- ``moto.backends.list_of_moto_modules``, which the dispatcher calls for every request to
  match the host against moto's service names: a ``listdir`` of moto's package folder and an
  ``isdir`` per entry (some 150 system calls). The folder does not change while the server
  runs, so it is read once.

In a 20/s crowd's booking burst these were ~24 % of moto's busy samples (py-spy), and a
private moto at load 11 spent 13.6 instead of 22.0 CPU ms per FIFO ``SendMessage`` (with
its share of the receives and deletes), P50 80 instead of 100 ms: docs/performance.md,
issue 22 "the reservation route". Errors are still logged (werkzeug's WARNING and above).

- SQS's clock: every ``SendMessage`` reads the queue's attributes four times (six per entry of
  a ``SendMessageBatch``), and each read counts the delayed, invisible and visible messages,
  asking ``unix_time_millis()`` for every message, which builds two ``datetime`` objects (now
  and the epoch) each time. Without an argument it is ``time.time()`` (in ms), which SQS's
  models now use; the counts and every answer are unchanged, only cheaper: issue 22
  "booking burst" in docs/performance.md.
- ``camelcase_to_underscores``, a character loop run for every queue attribute at every one
  of those reads (and for every request's action name): a pure function of a few dozen
  distinct names, remembered once computed.
- ``_validate_message`` (twice per send, four times per batch entry) reads only the queue's
  ``ContentBasedDeduplication`` of all its attributes: it is given a view of the queue whose
  ``attributes`` holds just that, so it counts no messages.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from datetime import datetime
from typing import Any

from moto import backends


def fast_sqs_clock() -> None:
    """moto's SQS models read the time from ``time.time()`` instead of two datetimes."""
    from moto.sqs import models

    slow_unix_time = models.unix_time  # type: ignore[attr-defined]

    def unix_time(dt: datetime | None = None) -> float:
        return time.time() if dt is None else slow_unix_time(dt)

    def unix_time_millis(dt: datetime | None = None) -> float:
        return unix_time(dt) * 1000.0

    models.unix_time = unix_time  # type: ignore[attr-defined]
    models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]


def remembered_names() -> None:
    """``camelcase_to_underscores`` of SQS's models and of the dispatcher, cached."""
    from moto.core import responses
    from moto.sqs import models

    cached = functools.lru_cache(maxsize=1024)(models.camelcase_to_underscores)  # type: ignore[attr-defined]
    models.camelcase_to_underscores = cached  # type: ignore[attr-defined]
    responses.camelcase_to_underscores = cached  # type: ignore[attr-defined]


class _ValidationView:
    """A queue as ``SQSBackend._validate_message`` reads it, the message counts left out."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)

    @property
    def attributes(self) -> dict[str, str]:
        # As ``Queue.attributes`` has it: a FIFO attribute, its bool as "true"/"false".
        if not self._queue.fifo_queue:
            return {}
        return {"ContentBasedDeduplication": str(self._queue.content_based_deduplication).lower()}


def light_validation() -> None:
    """``SQSBackend._validate_message`` sees a ``_ValidationView`` of the queue."""
    from moto.sqs.models import SQSBackend

    validate: Any = SQSBackend._validate_message

    def _validate_message(self: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        validate(self, _ValidationView(queue), *args, **kwargs)

    SQSBackend._validate_message = _validate_message  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    fast_sqs_clock()
    remembered_names()
    light_validation()
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: iter(modules)
    from moto.server import main as serve

    serve(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
