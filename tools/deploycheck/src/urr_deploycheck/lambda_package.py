"""Zip packages for the AWS Lambda functions, built from the workspace lock.

For one function: ``uv export --package <member> --no-dev --frozen`` pins its third-party
closure (with hashes), ``uv pip install --target`` installs those as wheels for the Lambda
platform (Python 3.11 runs on Amazon Linux 2: manylinux2014, x86_64 or arm64), the workspace
members the function needs are built into wheels and installed beside them, and everything is
zipped reproducibly (sorted entries, fixed timestamps) with the handler module checked present.

    uv run urr-lambda-package                     # every function of services.LAMBDA_FUNCTIONS
    uv run urr-lambda-package vwr-api --arch arm64 --out dist/lambda
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from urr_deploycheck.services import LAMBDA_FUNCTIONS, LambdaFunction

PLATFORMS = {"x86_64": "x86_64-manylinux2014", "arm64": "aarch64-manylinux2014"}
PYTHON_VERSION = "3.11"
_INSTALL = ("pip", "install", "--quiet", "--no-deps", "--target")
#: Third-party code comes as wheels built for the Lambda platform, never compiled here.
_WHEELS_ONLY = ("--only-binary", ":all:")
#: 1980-01-01, the earliest time a zip entry can carry: the same inputs give the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
#: What the installer wrote about this installation (temporary paths, cache keys): not needed
#: at run time (``METADATA`` is kept for ``importlib.metadata``) and never the same twice.
_INSTALLER_FILES = frozenset(
    {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "uv_cache.json"}
)


class PackagingError(RuntimeError):
    """A function could not be packaged; the message says which step failed and why."""


@dataclass(frozen=True)
class Built:
    function: LambdaFunction
    path: Path
    size_bytes: int


def uv() -> list[str]:
    """How to run uv: the one running us (``uv run`` sets ``UV``), else PATH, else the module."""
    path = os.environ.get("UV") or shutil.which("uv")
    return [path] if path else [sys.executable, "-m", "uv"]


def _run(args: Sequence[str], cwd: Path) -> str:
    result = subprocess.run(  # noqa: S603 - argv built here, no shell
        [*uv(), *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=600
    )
    if result.returncode != 0:
        raise PackagingError(f"uv {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout


def _export(package: str, workspace: Path, *, members: bool) -> str:
    scope = ["--no-editable"] if members else ["--no-emit-workspace"]
    return _run(
        ["export", "--package", package, "--no-dev", "--frozen", "--no-header", "--quiet", *scope],
        workspace,
    )


def workspace_members(package: str, workspace: Path) -> list[Path]:
    """Folders of the workspace members ``package`` needs (itself included)."""
    lines = _export(package, workspace, members=True).splitlines()
    return [workspace / line.strip() for line in lines if line.strip().startswith("./")]


def package_function(
    function: LambdaFunction,
    workspace: Path,
    out_dir: Path,
    *,
    arch: str = "x86_64",
    offline: bool = False,
) -> Built:
    """Build ``<out_dir>/<function.name>.zip``; raises ``PackagingError`` on any failure."""
    if arch not in PLATFORMS:
        raise PackagingError(f"unknown architecture {arch!r}; one of {sorted(PLATFORMS)}")
    network = ["--offline"] if offline else []
    with tempfile.TemporaryDirectory(prefix=f"urr-lambda-{function.name}-") as scratch:
        root = Path(scratch)
        target, wheels = root / "target", root / "wheels"
        requirements = root / "requirements.txt"
        requirements.write_text(_export(function.package, workspace, members=False))
        platform = ["--python-version", PYTHON_VERSION, "--python-platform", PLATFORMS[arch]]
        _run(
            [*_INSTALL, str(target), *_WHEELS_ONLY, *platform, *network, "-r", str(requirements)],
            workspace,
        )
        for member in workspace_members(function.package, workspace):
            _run(
                ["build", "--wheel", "--quiet", "--out-dir", str(wheels), *network, str(member)],
                workspace,
            )
        built_wheels = sorted(str(path) for path in wheels.glob("*.whl"))
        if not built_wheels:
            raise PackagingError(f"{function.package} is not a member of the workspace")
        _run(
            [*_INSTALL, str(target), *platform, *network, *built_wheels],
            workspace,
        )
        module_file = Path(*function.handler_module.split(".")).with_suffix(".py")
        if not (target / module_file).is_file():
            raise PackagingError(
                f"{function.name}: handler module {function.handler_module} "
                f"({module_file}) is not in package {function.package}"
            )
        out_dir.mkdir(parents=True, exist_ok=True)
        archive = out_dir / f"{function.name}.zip"
        _zip_tree(target, archive)
    return Built(function, archive, within_size_limit(function, archive))


def within_size_limit(function: LambdaFunction, archive: Path) -> int:
    """The zip's size; ``PackagingError`` when AWS would refuse it."""
    size = archive.stat().st_size
    if size > function.max_zip_bytes:
        raise PackagingError(
            f"{function.name}: {size} bytes zipped, over the {function.max_zip_bytes} AWS accepts"
        )
    return size


def _zip_tree(source: Path, archive: Path) -> None:
    partial = archive.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(_files(source)):
            relative = path.relative_to(source).as_posix()
            info = zipfile.ZipInfo(relative, date_time=_ZIP_EPOCH)
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    os.replace(partial, archive)


def _files(source: Path) -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(source):
        here = Path(directory)
        # ``bin/`` holds console scripts (top level only); caches are never shipped.
        subdirs[:] = [
            d for d in subdirs if d != "__pycache__" and not (here == source and d == "bin")
        ]
        installer_notes = _INSTALLER_FILES if here.name.endswith(".dist-info") else frozenset()
        found += [
            here / name
            for name in files
            if not name.endswith(".pyc") and name not in installer_notes
        ]
    return found


def _select(names: Sequence[str]) -> list[LambdaFunction]:
    if not names:
        return list(LAMBDA_FUNCTIONS)
    known = {function.name: function for function in LAMBDA_FUNCTIONS}
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise PackagingError(f"unknown functions {unknown}; known: {sorted(known)}")
    return [known[name] for name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("functions", nargs="*", help="function names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("dist/lambda"))
    parser.add_argument("--workspace", type=Path, default=Path.cwd())
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="x86_64")
    parser.add_argument("--offline", action="store_true", help="use the uv cache only")
    args = parser.parse_args(argv)
    try:
        for function in _select(args.functions):
            built = package_function(
                function, args.workspace, args.out, arch=args.arch, offline=args.offline
            )
            print(f"{built.function.name}: {built.path} ({built.size_bytes} bytes)")
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
