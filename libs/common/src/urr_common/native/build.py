"""Compile the modules ``urr_common.native.modules`` lists with mypyc, next to their sources.

``python -m urr_common.native.build`` (``make sync`` runs it) does nothing when the manifest
already matches the sources. Otherwise it removes the old build, compiles both groups and
writes the manifest last, so an interrupted build leaves no manifest and everything runs
interpreted. ``--clean`` removes the build. Needs mypy (which ships mypyc), setuptools and a
C compiler; where there is no compiler it says so and leaves the code interpreted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from urr_common.native import MANIFEST, check_build, expected_manifest, package_dir
from urr_common.native.modules import GROUPS, compiled_modules, shared_library


def built_files() -> list[Path]:
    """Every extension file a build leaves: one shim per module, one library per group."""
    found: list[Path] = []
    for package, _ in GROUPS:
        root = package_dir(package)
        if root is not None:
            found.extend(sorted(root.rglob("*.so")))
    return found


def clean() -> int:
    MANIFEST.unlink(missing_ok=True)
    removed = built_files()
    for path in removed:
        path.unlink()
    print(f"native build: removed {len(removed)} compiled files")
    return 0


def compile_groups(workdir: Path) -> None:
    """Compile a copy of the packages' sources, then move the extensions next to the real
    ones. The copy is what lets the same build run in the workspace and in an image's
    site-packages: mypy run inside site-packages takes every module there for a source of
    its own (and refuses ``mypy_extensions.py`` as shadowing the library)."""
    from mypyc.build import mypycify  # dev dependency: only the build needs it
    from setuptools import setup  # type: ignore[import-untyped]

    roots: dict[str, Path] = {}
    for package, _ in GROUPS:
        root = package_dir(package)
        if root is None:
            raise SystemExit(f"native build: package {package} not found")
        roots[package] = root
    sources = workdir / "src"
    for package, root in roots.items():
        shutil.copytree(root, sources / package, ignore=shutil.ignore_patterns("*.so", "*.pyc"))
    groups: list[tuple[list[str], str | None]] = [
        (
            [f"{package}/{name.replace('.', '/')}.py" for name in names],
            shared_library(package).removesuffix("__mypyc"),
        )
        for package, names in GROUPS
    ]
    os.chdir(sources)  # mypy names modules from paths relative to here
    extensions = mypycify(
        [
            # Types for the compiler, not a type check (``make types`` is): what the compiled
            # modules merely import may be uncheckable here (aioboto3 is not in the image).
            "--ignore-missing-imports",
            "--follow-imports=silent",
            "--cache-dir",
            str(workdir / "mypy"),
            *[f for files, _ in groups for f in files],
        ],
        separate=groups,
        opt_level="3",
        target_dir=str(workdir / "c"),
    )
    setup(
        name="urr-native",
        ext_modules=extensions,
        script_args=[
            "--quiet",
            "build_ext",
            "--inplace",
            "--build-temp",
            str(workdir / "obj"),
            "--parallel",
            str(os.cpu_count() or 1),
        ],
    )
    for package, root in roots.items():
        for built in (sources / package).rglob("*.so"):
            shutil.move(built, root / built.relative_to(sources / package))


def build(force: bool) -> int:
    modules = compiled_modules()
    problem = check_build(MANIFEST, modules)
    if problem is None and not force:
        print(f"native build: up to date ({len(modules)} modules)")
        return 0
    if shutil.which(os.environ.get("CC", "cc")) is None:
        print("native build: no C compiler (cc): the gateway runs interpreted", file=sys.stderr)
        return 0
    print(f"native build: compiling {len(modules)} modules with mypyc ({problem or 'forced'})")
    started = time.monotonic()
    clean()
    expected = expected_manifest(modules)
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="urr-native-") as workdir:
        try:
            compile_groups(Path(workdir))
        finally:
            os.chdir(cwd)
    if expected_manifest(modules) != expected:
        print("native build: sources changed while compiling; run it again", file=sys.stderr)
        return 1
    partial = MANIFEST.with_suffix(".partial")
    partial.write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    partial.replace(MANIFEST)
    print(f"native build: done in {time.monotonic() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m urr_common.native.build")
    parser.add_argument("--clean", action="store_true", help="remove the build")
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    args = parser.parse_args(argv)
    return clean() if args.clean else build(args.force)


if __name__ == "__main__":
    sys.exit(main())
