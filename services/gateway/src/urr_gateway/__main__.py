"""``python -m urr_gateway`` (or ``urr-gateway``): serve the gateway.

``URR_WORKERS`` worker processes (default 1: served in this process) share
``URR_HTTP__HOST``:``URR_HTTP__PORT`` (default 127.0.0.1:3001).
"""

from __future__ import annotations

import sys

from urr_common import native
from urr_common.logs import configure_logging
from urr_common.settings import SettingsError, load_settings
from urr_gateway.settings import GatewaySettings
from urr_gateway.workers import serve_in_process, supervise


def main() -> None:
    try:
        settings = load_settings(GatewaySettings)
        # URR_NATIVE=1 (the image): refuse to run the request path interpreted by accident.
        native.require(native.status())
    except (SettingsError, native.NativeBuildError) as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log, service=settings.service_name)
    if settings.workers == 1:
        serve_in_process(settings)
        return
    sys.exit(supervise(settings))


if __name__ == "__main__":
    main()
