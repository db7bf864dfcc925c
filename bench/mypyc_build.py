"""Phase-1 prototype: compile the gateway's public request path with mypyc, in place.

Not wired into ``make sync`` (see docs/performance.md, branch ``i17-mypyc``): the ``.so``
files it writes next to the sources shadow them (an extension module wins over a ``.py``
in the same directory), so remove them with ``--clean`` before editing those modules.

    python3 -m uv pip install --python .venv/bin/python setuptools   # not in the lock
    flock -s /work/wt/quiet.lock .venv/bin/python bench/mypyc_build.py
    .venv/bin/python bench/mypyc_build.py --clean

Left interpreted (what mypyc refused, see the docs section): ``trust`` and ``checkapi``
(pydantic models), ``filters.jwt_auth``, ``filters.entry_token`` and ``filters.ratelimit``
(``@web.middleware`` on methods), ``ratelimit.finetimer`` (``ctypes.Structure``),
``checkserver`` (its site subclasses ``Http1Site``, a ``BaseSite`` with ``__slots__``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = "services/gateway/src/urr_gateway"
COMMON = "libs/common/src/urr_common"
GATEWAY_MODULES = [
    "publicserver",
    "publicrequest",
    "chain",
    "context",
    "forwarding",
    "responseheaders",
    "routing",
    "tokencache",
    "paths",
    "ingress",
    "verification",
    "revocation",
    "filters/base",
    "filters/cookie_auth",
    "filters/csrf",
    "ratelimit/pipeline",
    "ratelimit/limiter",
    "ratelimit/window",
    "ratelimit/headers",
    "ratelimit/keys",
    "ratelimit/slots",
    "ratelimit/budget",
    "ratelimit/deny_cache",
    "ratelimit/local",
    "ratelimit/breaker",
    "ratelimit/tenant",
    "ratelimit/routing",
    "upstream/client",
    "upstream/connection",
    "upstream/pool",
    "upstream/deadlines",
    "upstream/errors",
]
COMMON_MODULES = ("http1", "resp", "logs")


def clean() -> None:
    for package in (GATEWAY, COMMON):
        for built in (ROOT / package).rglob("*.so"):
            print(f"removing {built.relative_to(ROOT)}")
            built.unlink()


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)
    gateway = [f"{GATEWAY}/{name}.py" for name in GATEWAY_MODULES]
    common = [f"{COMMON}/{name}.py" for name in COMMON_MODULES]
    sys.argv = ["setup", "build_ext", "--inplace"]
    setup(
        name="urr-native-prototype",
        package_dir={"urr_gateway": GATEWAY, "urr_common": COMMON},
        ext_modules=mypycify(
            gateway + common,
            separate=[(gateway, "urr_gateway._native"), (common, "urr_common._native")],
            opt_level="3",
        ),
    )


if __name__ == "__main__":
    clean() if sys.argv[1:] == ["--clean"] else build()
