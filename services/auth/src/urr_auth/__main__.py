"""Entry point: ``python -m urr_auth`` and the ``urr-auth`` console script."""

from __future__ import annotations

import sys

from urr_auth.cli import main as _main


def main() -> None:
    sys.exit(_main())


if __name__ == "__main__":
    main()
