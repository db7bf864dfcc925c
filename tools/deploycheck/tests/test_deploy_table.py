"""The deployment table agrees with the real services and with the local stack's table."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from urr_deploycheck.services import WORKLOADS, Workload
from urr_devstack.services import SERVICES as DEVSTACK_SERVICES


def _source_file(module: str) -> Path:
    """The file ``python -m module`` runs (a package runs its ``__main__``)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is not installed"
    if spec.submodule_search_locations is not None:
        spec = importlib.util.find_spec(f"{module}.__main__")
        assert spec is not None, f"{module} has no __main__"
    assert spec.origin is not None, module
    return Path(spec.origin)


def _loaded_settings(path: Path) -> set[str]:
    """Class names passed to ``load_settings(...)`` in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.args[0].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "load_settings"
        and node.args
        and isinstance(node.args[0], ast.Name)
    }


def _own_imports(path: Path, package: str) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module is not None
        and node.module.split(".")[0] == package
    ]


def settings_the_process_loads(module: str) -> set[str]:
    """Settings classes the module's entry point builds: read from its own file, or (for a thin
    ``__main__`` that only calls into its package) from the package modules it imports."""
    path = _source_file(module)
    found = _loaded_settings(path)
    if not found:
        for imported in _own_imports(path, module.split(".")[0]):
            found |= _loaded_settings(_source_file(imported))
    return found


@pytest.mark.parametrize("entry", WORKLOADS, ids=lambda entry: entry.name)
def test_the_module_builds_the_settings_the_table_names(entry: Workload):
    named = {path.partition(":")[2] for path in entry.settings}
    assert settings_the_process_loads(entry.module) == named


def test_the_table_runs_what_the_local_stack_runs():
    # Same processes, modules, ports and extra listeners as tools/devstack's table.
    deployed = {
        w.name: (w.module, w.port, {extra.name: extra.port for extra in w.extra_ports})
        for w in WORKLOADS
    }
    local = {s.name: (s.module, s.port, dict(s.extra_ports)) for s in DEVSTACK_SERVICES}
    assert deployed == local


def test_ports_are_distinct_and_the_design_ones():
    ports = [p for w in WORKLOADS for p in (w.port, *(e.port for e in w.extra_ports))]
    assert len(ports) == len(set(ports))
    expected = {
        "gateway": 3001,
        "ticket": 3002,
        "auth": 3005,
        "queue": 3007,
        "vwr-apigw": 3010,
        "vwr-scheduler": 3012,
        "ticket-poller": 3020,
        "ticket-relay": 3021,
        "ticket-payment": 3022,
        "ticket-stats": 3023,
        "ticket-outcomes": 3024,
        "ticket-exporter": 3025,
        "admission-log": 3030,
        "ratelimit-admin": 3040,
        "ratelimit-usage": 3041,
        "vwr-edge": 8000,
    }
    assert {w.name: w.port for w in WORKLOADS} == expected
