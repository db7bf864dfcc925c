"""The mypyc build's guard: compiled code runs only when built from exactly these sources."""

from __future__ import annotations

import ast
import importlib
import json
import sys
from importlib.machinery import EXTENSION_SUFFIXES, PathFinder
from pathlib import Path

import pytest

from urr_common import native
from urr_common.native import (
    NativeBuildError,
    SourceFirstFinder,
    check_build,
    decide,
    expected_manifest,
    module_source,
)
from urr_common.native.modules import compiled_modules


def test_the_mode_is_validated_with_a_clear_message() -> None:
    assert native.read_mode({}) == "auto"
    assert native.read_mode({"URR_NATIVE": " 1 "}) == "1"
    with pytest.raises(NativeBuildError, match="expected auto, 0"):
        native.read_mode({"URR_NATIVE": "yes"})


def test_urr_native_0_never_loads_compiled_code(tmp_path: Path) -> None:
    manifest = tmp_path / "build.json"
    manifest.write_text(json.dumps(expected_manifest(compiled_modules())))
    assert not decide({"URR_NATIVE": "0"}, manifest).active


def test_without_a_build_auto_runs_interpreted_and_1_refuses_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "build.json"
    status = decide({}, missing)
    assert not status.active
    assert "no build" in status.reason
    native.require(status)  # auto: interpreted is allowed
    required = decide({"URR_NATIVE": "1"}, missing)  # the import never fails (the builder)
    assert not required.active
    with pytest.raises(NativeBuildError, match="URR_NATIVE=1 but the mypyc build is not usable"):
        native.require(required)


def _manifest(tmp_path: Path, **changes: object) -> Path:
    data = expected_manifest(compiled_modules())
    data.update(changes)
    path = tmp_path / "build.json"
    path.write_text(json.dumps(data))
    return path


def test_an_edited_source_disables_the_whole_build(tmp_path: Path) -> None:
    modules = compiled_modules()
    digests = dict(expected_manifest(modules)["modules"])  # type: ignore[call-overload]
    digests["urr_gateway.chain"] = "0" * 64
    reason = check_build(_manifest(tmp_path, modules=digests), modules)
    assert reason is not None
    assert "urr_gateway.chain changed since the build" in reason
    assert not decide({}, tmp_path / "build.json").active


def test_a_build_for_another_interpreter_or_module_list_is_not_used(tmp_path: Path) -> None:
    modules = compiled_modules()
    assert check_build(_manifest(tmp_path, python="cpython-312.so"), modules) == (
        "built for another interpreter"
    )
    fewer = dict(expected_manifest(modules)["modules"])  # type: ignore[call-overload]
    del fewer["urr_common.resp"]
    assert "list of compiled modules changed" in str(
        check_build(_manifest(tmp_path, modules=fewer), modules)
    )
    (tmp_path / "build.json").write_text("{not json")
    assert "unreadable manifest" in str(check_build(tmp_path / "build.json", modules))


def test_a_stale_extension_never_shadows_its_source(tmp_path: Path) -> None:
    """An extension beside a ``.py`` would win the import: the guard loads the ``.py``. The
    extension here is garbage, so loading it would fail the import outright."""
    package = tmp_path / "urr_probe_stale"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("WHERE = 'source'\n")
    (package / f"mod{EXTENSION_SUFFIXES[0]}").write_bytes(b"not an ELF file")
    # Python's own finder takes the extension:
    plain = PathFinder.find_spec("urr_probe_stale.mod", [str(package)])
    assert plain is not None
    assert str(plain.origin).endswith(EXTENSION_SUFFIXES[0])
    sys.path.insert(0, str(tmp_path))
    try:
        assert importlib.import_module("urr_probe_stale.mod").WHERE == "source"  # the guard
        guard = SourceFirstFinder(frozenset())
        spec = guard.find_spec("urr_probe_stale.mod", [str(package)])
        assert spec is not None
        assert spec.origin == str(package / "mod.py")
        assert guard.find_spec("other_pkg.mod", [str(package)]) is None  # not ours
        assert (
            SourceFirstFinder(frozenset({"urr_probe_stale.mod"})).find_spec(
                "urr_probe_stale.mod", [str(package)]
            )
            is None
        )  # a verified module: the extension is loaded
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("urr_probe_stale", "urr_probe_stale.mod"):
            sys.modules.pop(name, None)


def test_the_guard_is_first_and_the_modules_load_as_it_decided() -> None:
    status = native.status()
    assert isinstance(sys.meta_path[0], SourceFirstFinder)
    for name in compiled_modules():
        module = importlib.import_module(name)
        compiled = not str(module.__file__).endswith(".py")
        assert compiled is status.active, (name, module.__file__, status.reason)


def _names_reused_across_except_clauses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        types: dict[str, str] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.ExceptHandler) and node.name:
                caught = ast.unparse(node.type) if node.type else "BaseException"
                if types.setdefault(node.name, caught) != caught:
                    found.append((node.lineno, node.name))
    return found


@pytest.mark.parametrize("module", compiled_modules())
def test_compiled_modules_avoid_what_mypyc_types_differently(module: str) -> None:
    """Compiled, a local keeps one type: ``except A as e`` then ``except B as e`` makes a
    ``B`` a TypeError at run time; a walrus in a ``while`` test takes the narrowed type."""
    source = module_source(module)
    assert source is not None
    tree = ast.parse(source.read_text())
    assert _names_reused_across_except_clauses(tree) == []
    walruses = [
        node.lineno
        for loop in ast.walk(tree)
        if isinstance(loop, ast.While)
        for node in ast.walk(loop.test)
        if isinstance(node, ast.NamedExpr) and isinstance(loop.test, ast.BoolOp)
    ]
    assert walruses == []


def _awaits_in_except_clauses(tree: ast.AST) -> list[int]:
    found: list[int] = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Try):
                clauses = [*node.handlers, *node.finalbody]
                found.extend(
                    inner.lineno
                    for clause in clauses
                    for inner in ast.walk(clause)
                    if isinstance(inner, ast.Await | ast.AsyncFor | ast.AsyncWith)
                )
    return found


@pytest.mark.parametrize("module", compiled_modules())
def test_compiled_coroutines_never_wait_inside_except_or_finally(module: str) -> None:
    """Compiled, a coroutine suspended inside an ``except`` clause leaves its exception set
    as the one being handled for every other callback of the loop while it waits (and inside
    a ``finally`` run by an exception, even after it ends): any exception raised there meanwhile
    gets it as its ``__context__`` (httptools' callback errors lost their cause that way), and a
    log call's ``exc_info`` shows it. Measured with a two-function module and mypyc: see
    docs/performance.md, the eighth session's section."""
    source = module_source(module)
    assert source is not None
    assert _awaits_in_except_clauses(ast.parse(source.read_text())) == []


def test_a_missing_shared_library_disables_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each group's code is in one library beside the package; without it every shim would
    fail to import, so the whole build is refused instead. (The packages are looked for in an
    empty folder: the real files stay where they are, other workers may be importing them.)"""
    manifest = _manifest(tmp_path)
    monkeypatch.setattr(native, "package_dir", lambda package: tmp_path)
    assert check_build(manifest, compiled_modules()) == (
        "urr_common._native__mypyc: compiled library missing"
    )
