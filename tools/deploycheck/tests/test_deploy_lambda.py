"""Lambda packaging, run for real on a small workspace (and on this one's shared library)."""

from __future__ import annotations

import hashlib
import importlib
import re
import subprocess
import sys
import textwrap
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

from urr_deploycheck.lambda_package import (
    Built,
    PackagingError,
    main,
    package_function,
    uv,
    within_size_limit,
    workspace_members,
)
from urr_deploycheck.services import LAMBDA_FUNCTIONS, LambdaFunction

REPO = Path(__file__).resolve().parents[3]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A workspace like ours: a virtual root, a library member and a function member that
    depends on it and on a third-party wheel (idna at the version `make sync` installed, so
    its wheel is in the uv cache and packaging runs offline)."""
    root: Path = tmp_path_factory.mktemp("workspace")
    _write(
        root / "pyproject.toml",
        """
        [tool.uv.workspace]
        members = ["libs/*", "functions/*"]
        [tool.uv]
        package = false
        [tool.uv.sources]
        demo-lib = { workspace = true }
        demo-fn = { workspace = true }
        [project]
        name = "demo"
        version = "0"
        requires-python = ">=3.11,<3.12"
        dependencies = ["demo-fn"]
        """,
    )
    build = """
        [build-system]
        requires = ["hatchling>=1.27"]
        build-backend = "hatchling.build"
        [tool.hatch.build.targets.wheel]
        packages = ["src/{module}"]
        """
    _write(
        root / "libs/lib/pyproject.toml",
        """
        [project]
        name = "demo-lib"
        version = "0.1.0"
        requires-python = ">=3.11,<3.12"
        dependencies = ["idna=={IDNA}"]
        """.replace("{IDNA}", version("idna"))
        + build.format(module="demo_lib"),
    )
    _write(root / "libs/lib/src/demo_lib/__init__.py", "VALUE = 1\n")
    _write(
        root / "functions/fn/pyproject.toml",
        """
        [project]
        name = "demo-fn"
        version = "0.1.0"
        requires-python = ">=3.11,<3.12"
        dependencies = ["demo-lib"]
        [project.scripts]
        demo-fn = "demo_fn.handler:handler"
        [tool.uv.sources]
        demo-lib = { workspace = true }
        """
        + build.format(module="demo_fn"),
    )
    _write(root / "functions/fn/src/demo_fn/__init__.py", "")
    _write(
        root / "functions/fn/src/demo_fn/handler.py",
        """
        import idna
        from demo_lib import VALUE

        def handler(event, context):
            return {"value": VALUE, "host": idna.encode("bücher.example").decode()}
        """,
    )
    # Offline when the cache already knows idna's index page; a fresh machine's cache holds
    # only the wheels `make sync` installed, so the lock then asks the index once.
    offline = subprocess.run([*uv(), "lock", "--offline", "--quiet"], cwd=root, check=False)
    if offline.returncode != 0:
        subprocess.run([*uv(), "lock", "--quiet"], cwd=root, check=True, timeout=120)
    return root


FUNCTION = LambdaFunction("demo", "demo-fn", "demo_fn.handler.handler")


@pytest.fixture(scope="module")
def built(workspace, tmp_path_factory) -> Built:
    return package_function(FUNCTION, workspace, tmp_path_factory.mktemp("out"), offline=True)


def test_zip_holds_the_handler_its_workspace_libraries_and_locked_wheels(built):
    assert built.path.name == "demo.zip"
    with zipfile.ZipFile(built.path) as zf:
        names = set(zf.namelist())
        assert "demo_fn/handler.py" in names
        assert "demo_lib/__init__.py" in names
        assert "idna/__init__.py" in names
        assert not [n for n in names if n.startswith("bin/") or "__pycache__" in n]
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in zf.infolist())
    assert built.size_bytes == built.path.stat().st_size


def test_the_packaged_handler_runs_from_the_zip_alone(built):
    # Python imports straight from a zip on sys.path, as Lambda does from the unpacked tree.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from demo_fn.handler import handler; print(handler({}, None))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code, str(built.path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.strip() == "{'value': 1, 'host': 'xn--bcher-kva.example'}"


def test_packaging_is_reproducible(workspace, built, tmp_path):
    again = package_function(FUNCTION, workspace, tmp_path, offline=True)
    digest = [hashlib.sha256(b.path.read_bytes()).hexdigest() for b in (built, again)]
    assert digest[0] == digest[1]


def test_a_missing_handler_module_fails(workspace, tmp_path):
    wrong = LambdaFunction("wrong", "demo-fn", "demo_fn.nowhere.handler")
    with pytest.raises(PackagingError, match=r"demo_fn\.nowhere .* is not in package demo-fn"):
        package_function(wrong, workspace, tmp_path, offline=True)


def test_a_zip_over_the_size_limit_fails(built):
    tiny = LambdaFunction("tiny", "demo-fn", "demo_fn.handler.handler", max_zip_bytes=1000)
    with pytest.raises(PackagingError, match="over the 1000 AWS accepts"):
        within_size_limit(tiny, built.path)
    assert within_size_limit(FUNCTION, built.path) == built.size_bytes


def test_a_package_outside_the_workspace_fails(workspace, tmp_path):
    stranger = LambdaFunction("x", "not-a-member", "x.handler")
    with pytest.raises(PackagingError, match="not-a-member"):
        package_function(stranger, workspace, tmp_path, offline=True)


def test_workspace_members_follow_the_lock(workspace):
    members = workspace_members("demo-fn", workspace)
    assert sorted(p.relative_to(workspace).as_posix() for p in members) == [
        "functions/fn",
        "libs/lib",
    ]


def test_this_workspace_exports_the_shared_library_for_lambda():
    # The real lock: urr-common is what every function member builds on.
    assert workspace_members("urr-common", REPO) == [REPO / "libs/common"]


def test_the_command_line_rejects_unknown_functions(capsys):
    assert main(["no-such-function", "--workspace", str(REPO)]) == 1
    assert "unknown functions ['no-such-function']" in capsys.readouterr().err


def test_every_table_function_names_a_module_handler():
    for function in LAMBDA_FUNCTIONS:
        module, _, name = function.handler.rpartition(".")
        assert module.startswith(function.package.replace("-", "_") + ".")
        assert name.isidentifier()


def test_every_table_handler_is_a_function_of_the_real_package():
    for function in LAMBDA_FUNCTIONS:
        module = importlib.import_module(function.handler_module)
        assert callable(getattr(module, function.handler.rpartition(".")[2], None)), function


def test_the_sam_template_deploys_the_table_handlers():
    # The VWR template's non-edge functions are the table's (the edge bundle is built apart).
    repo = Path(__file__).resolve().parents[3]
    template = (repo / "services/vwr_lambda/template.yaml").read_text(encoding="utf-8")
    handlers = set(re.findall(r"^\s+Handler: (\S+)$", template, flags=re.MULTILINE))
    vwr = {f.handler for f in LAMBDA_FUNCTIONS if f.package == "urr-vwr-lambda"}
    assert handlers - vwr == {"urr_vwr_lambda.edge.handler"}
    assert vwr <= handlers


def test_the_ca_bundle_the_vwr_functions_name_is_inside_their_package(tmp_path):
    """Issue 19: the API and advancer functions verify MSK against a file under /var/task
    (the unpacked zip); it must come from a wheel package_function installs for them."""
    template = (REPO / "services/vwr_lambda/template.yaml").read_text(encoding="utf-8")
    named = set(re.findall(r"^\s+URR_GRANT_LOG__KAFKA__CA_FILE: (\S+)$", template, re.MULTILINE))
    [ca_file] = named
    inside = Path(ca_file).relative_to("/var/task").as_posix()
    wheels = tmp_path / "wheels"
    for member in workspace_members("urr-vwr-lambda", REPO):
        subprocess.run(
            [*uv(), "build", "--wheel", "--quiet", "--offline", "--out-dir", str(wheels), member],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=300,
        )
    shipped = set()
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            shipped |= set(zf.namelist())
    assert "urr_vwr_lambda/advancer.py" in shipped
    assert inside in shipped
    # The workspace's own mypyc build (``make sync``: extensions and their manifest beside the
    # sources) never ships in a wheel: built for this machine, not for Lambda's.
    assert [name for name in shipped if name.endswith((".so", "native/build.json"))] == []
