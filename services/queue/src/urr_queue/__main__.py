"""``python -m urr_queue`` / ``urr-queue``: run the queue service until SIGTERM."""

from __future__ import annotations

import sys

from urr_common.logs import configure_logging
from urr_common.service import run, serve
from urr_common.settings import SettingsError, load_settings
from urr_common.upstream_security import serve_internal_listener
from urr_queue.app import create_app
from urr_queue.settings import QueueSettings


def main() -> None:
    try:
        settings = load_settings(QueueSettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc
    configure_logging(settings.log, service=settings.service_name)

    async def serve_queue() -> None:
        app = create_app(settings)
        # /internal/... (the ticket service's completion reports) on its own listener.
        serve_internal_listener(app, settings.internal, settings.http.port)
        await serve(app, settings.http)

    run(serve_queue, use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
