"""Cold import time of each VWR handler module, each in a fresh interpreter.

    uv run python bench/vwr_imports.py [--runs 7]

Prints the median and the best of ``--runs`` fresh interpreters per module: what a Lambda's
INIT phase pays for ``import`` before the first invocation. Nothing runs at import (no env
reads, no clients), so this is the import of code and libraries only.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

MODULES = ["urr_vwr_lambda.api", "urr_vwr_lambda.advancer", "urr_vwr_lambda.edge"]
PROBE = (
    "import time, importlib; t = time.perf_counter(); importlib.import_module({name!r}); "
    "print(time.perf_counter() - t)"
)


def import_seconds(module: str) -> float:
    output = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", PROBE.format(name=module)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"{'module':<28} {'median ms':>10} {'best ms':>9}  ({args.runs} fresh interpreters)")
    for module in MODULES:
        times = [import_seconds(module) * 1000 for _ in range(args.runs)]
        print(f"{module:<28} {statistics.median(times):>10.1f} {min(times):>9.1f}")


if __name__ == "__main__":
    main()
