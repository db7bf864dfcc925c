"""Load the mypyc build only when it was built from exactly these sources.

An extension module next to its source wins over the ``.py`` in Python's import system, so a
build left from older sources would go on running old code after an edit. ``install`` (run
when ``urr_common`` is first imported) puts a finder first on ``sys.meta_path``: the compiled
modules load only when the manifest the builder wrote names this interpreter and every
compiled source's SHA-256 still matches, and the build is used whole or not at all (the
gateway's compiled group calls into the common one). Otherwise every ``urr_*`` module with
an extension beside it loads from its ``.py``.

``URR_NATIVE``: ``auto`` (the default) uses a matching build and runs interpreted otherwise;
``0`` never loads compiled code; ``1`` makes the gateway refuse to start without a matching
build (``require``, at its start; the images, where running slower by accident would go
unnoticed). The import itself never fails over a build: the builder imports this package
before there is one.

This package is never compiled.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.abc import MetaPathFinder
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, PathFinder
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

from urr_common.native.modules import GROUPS, compiled_modules, shared_library

MANIFEST = Path(__file__).with_name("build.json")
MODES = ("auto", "0", "1")


class NativeBuildError(RuntimeError):
    """URR_NATIVE is not a known mode, or is 1 without a build matching the sources."""


@dataclass(frozen=True)
class NativeStatus:
    mode: str
    compiled: frozenset[str]
    reason: str

    @property
    def active(self) -> bool:
        return bool(self.compiled)


def read_mode(environ: Mapping[str, str]) -> str:
    mode = environ.get("URR_NATIVE", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise NativeBuildError(
            f"URR_NATIVE={environ['URR_NATIVE']!r}: expected auto, 0 (never load the mypyc "
            "build) or 1 (refuse to start without a build matching the sources)"
        )
    return mode


def python_tag() -> str:
    """What a build is only valid for: this interpreter's extension ABI."""
    return f"{sys.implementation.cache_tag}{EXTENSION_SUFFIXES[0]}"


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_dir(package: str) -> Path | None:
    """Where a top-level package's sources are, found without importing it."""
    spec = PathFinder.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def module_source(module: str) -> Path | None:
    package, *rest = module.split(".")
    root = package_dir(package)
    if root is None or not rest:
        return None
    return root.joinpath(*rest[:-1], f"{rest[-1]}.py")


def module_extension(module: str) -> Path | None:
    source = module_source(module)
    return None if source is None else source.with_name(source.stem + EXTENSION_SUFFIXES[0])


def expected_manifest(modules: Sequence[str]) -> dict[str, object]:
    """The manifest a build of ``modules`` from the sources on disk now would write."""
    digests: dict[str, str] = {}
    for module in modules:
        source = module_source(module)
        if source is None or not source.is_file():
            raise NativeBuildError(f"{module}: no source found to compile")
        digests[module] = source_digest(source)
    return {"python": python_tag(), "groups": [g for g, _ in GROUPS], "modules": digests}


def check_build(manifest: Path, modules: Sequence[str]) -> str | None:
    """None when the build in place matches the sources; else why it may not be used."""
    try:
        built = json.loads(manifest.read_text())
    except FileNotFoundError:
        return "no build (make sync compiles it)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest {manifest}: {exc}"
    if not isinstance(built, dict) or built.get("python") != python_tag():
        return "built for another interpreter"
    recorded = built.get("modules")
    if not isinstance(recorded, dict) or set(recorded) != set(modules):
        return "the list of compiled modules changed since the build"
    for package, _ in GROUPS:
        root = package_dir(package)
        library = shared_library(package).rpartition(".")[2] + EXTENSION_SUFFIXES[0]
        if root is None or not (root / library).is_file():
            return f"{shared_library(package)}: compiled library missing"
    for module in modules:
        source, extension = module_source(module), module_extension(module)
        if source is None or extension is None or not source.is_file():
            return f"{module}: source not found"
        if not extension.is_file():
            return f"{module}: compiled module missing"
        if source_digest(source) != recorded[module]:
            return f"{module} changed since the build (make sync rebuilds it)"
    return None


class SourceFirstFinder(MetaPathFinder):
    """Loads an ``urr_*`` module from its ``.py`` unless it belongs to the verified build."""

    def __init__(self, compiled: frozenset[str]) -> None:
        self.compiled = compiled

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if path is None or fullname in self.compiled or not fullname.startswith("urr_"):
            return None
        name = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, f"{name}.py")
            if os.path.isfile(source) and any(
                os.path.exists(os.path.join(entry, name + suffix)) for suffix in EXTENSION_SUFFIXES
            ):
                return spec_from_file_location(fullname, source)
        return None


def decide(environ: Mapping[str, str], manifest: Path = MANIFEST) -> NativeStatus:
    mode = read_mode(environ)
    modules = compiled_modules()
    if mode == "0":
        return NativeStatus(mode, frozenset(), "URR_NATIVE=0")
    problem = check_build(manifest, modules)
    if problem is not None:
        return NativeStatus(mode, frozenset(), problem)
    return NativeStatus(mode, frozenset(modules), f"{len(modules)} modules compiled")


_installed: NativeStatus | None = None


def install(environ: Mapping[str, str] = os.environ) -> NativeStatus:
    """Put the guard first on ``sys.meta_path`` (once per process) and say what it allows."""
    global _installed  # the import system is per process; so is this decision
    if _installed is None:
        status = decide(environ)
        sys.meta_path.insert(0, SourceFirstFinder(status.compiled))
        _installed = status
    return _installed


def status() -> NativeStatus:
    return install()


def require(decided: NativeStatus) -> None:
    """Refuse to start under ``URR_NATIVE=1`` when the build is not in use (a service's start)."""
    if decided.mode == "1" and not decided.active:
        raise NativeBuildError(f"URR_NATIVE=1 but the mypyc build is not usable: {decided.reason}")
