"""``python -m urr_vwr_lambda [apigw|edge|scheduler]``: run one local stand-in (default apigw)."""

from __future__ import annotations

import sys


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "apigw"
    if which == "apigw":
        from urr_vwr_lambda.local.apigw import main as run
    elif which == "edge":
        from urr_vwr_lambda.local.edge import main as run
    elif which == "scheduler":
        from urr_vwr_lambda.local.scheduler import main as run
    else:
        sys.exit(f"usage: python -m urr_vwr_lambda [apigw|edge|scheduler] (not {which!r})")
    run()


if __name__ == "__main__":
    main()
