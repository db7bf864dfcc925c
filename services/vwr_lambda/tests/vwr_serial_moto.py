"""A moto server that handles one request at a time: ``python vwr_serial_moto.py PORT``.

moto's own server runs requests on threads without a lock, so two concurrent
``UpdateItem ADD`` on one item can both read the old value (observed: about one duplicate
number in a thousand). DynamoDB serialises writes to an item; this server models that by
serialising every request, while still accepting many keep-alive connections.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


def serialised(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    lock = threading.Lock()

    def handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    return handle


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, serialised(app), threaded=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
