"""The Dockerfiles: generated from the table, built from the lock, unprivileged, healthchecked.

Docker is not available here, so the parts of a build that can run without it do: the exact
``uv sync`` of the build stage into a scratch venv, and the HEALTHCHECK command against a real
service's ``/health/ready``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from urr_common.native.modules import compiled_modules
from urr_common.service import READINESS_KEY, create_service_app
from urr_common.settings import ServiceSettings
from urr_deploycheck.dockerfiles import (
    NATIVE_BUILD_PACKAGES,
    dockerfile_path,
    healthcheck_code,
    locked_versions,
    native_build_commands,
    present_images,
    render_dockerfile,
)
from urr_deploycheck.generate import stale_files
from urr_deploycheck.lambda_package import uv
from urr_deploycheck.services import IMAGES, WORKLOADS

REPO = Path(__file__).resolve().parents[3]


def test_generated_files_are_up_to_date():
    assert stale_files(REPO) == [], "run `uv run urr-deploy-generate`"


def test_every_image_module_and_port_belongs_to_a_workload():
    for image in IMAGES:
        users = [w for w in WORKLOADS if w.image == image]
        assert any(w.module == image.module and w.port == image.port for w in users), image


@pytest.mark.parametrize("image", present_images(REPO), ids=lambda image: image.folder)
def test_dockerfile_builds_its_member_and_runs_it_unprivileged(image):
    text = dockerfile_path(REPO, image).read_text(encoding="utf-8")
    with (REPO / "services" / image.folder / "pyproject.toml").open("rb") as handle:
        member = tomllib.load(handle)["project"]["name"]
    assert member == image.package
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, flags=re.MULTILINE)
    assert [name for _, name in stages] == ["uv", "build", "runtime"]
    # A compiled image builds with a compiler (the full image of the same release).
    build_image = "${PYTHON_BUILD_IMAGE}" if image.native else "${PYTHON_IMAGE}"
    assert (stages[1][0], stages[2][0]) == (build_image, "${PYTHON_IMAGE}")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert ("ARG PYTHON_BUILD_IMAGE=python:3.11-bookworm" in text) is image.native
    assert ("URR_NATIVE=1" in text.split(" AS runtime", 1)[1]) is image.native
    assert f"uv sync --frozen --no-dev --no-editable --package {member}" in text
    runtime = text.split(" AS runtime", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "USER 1000:1000" in runtime
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    assert f"EXPOSE {image.port}" in runtime
    assert runtime.rstrip().endswith(f'CMD ["python", "-m", "{image.module}"]')
    assert "HEALTHCHECK" in runtime
    assert not re.search(r"\b(curl|wget|apt-get)\b", text)


def test_dockerignore_keeps_the_workspace_and_drops_local_state():
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".urr"} <= ignored
    assert not ignored & {"libs", "services", "tools", "pyproject.toml", "uv.lock"}


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule for the patterns this repository uses: anchored at the context root,
    ``**/x`` matching ``x`` at any depth; a matching folder drops all it holds."""
    parts = relative.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(
            fnmatch.fnmatchcase("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)
        ):
            return True
    return False


def build_context(destination: Path) -> Path:
    """What ``docker build .`` sends: the repository minus ``.dockerignore``."""
    patterns = _dockerignore_patterns()

    def ignore(folder: str, names: list[str]) -> set[str]:
        base = Path(folder).relative_to(REPO).as_posix()
        prefix = "" if base == "." else base + "/"
        return {name for name in names if _ignored(prefix + name, patterns)}

    shutil.copytree(REPO, destination, ignore=ignore, symlinks=True)
    return destination


def test_the_dockerignore_reading_follows_docker_s_rules():
    patterns = [".git", "docs", "**/tests", "**/*.pyc"]
    assert _ignored(".git/config", patterns)
    assert _ignored("docs/runbook.md", patterns)
    assert _ignored("services/gateway/tests/test_x.py", patterns)
    assert _ignored("libs/common/src/urr_common/__pycache__/x.pyc", patterns)
    assert not _ignored("services/docs/readme.md", patterns)
    assert not _ignored("services/gateway/src/urr_gateway/app.py", patterns)


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    return build_context(tmp_path_factory.mktemp("docker") / "context")


@pytest.mark.timeout(600)  # the gateway's image compiles its request path (~80 s of gcc)
@pytest.mark.parametrize("image", present_images(REPO), ids=lambda image: image.folder)
def test_the_build_stage_installs_exactly_the_member_from_the_lock(image, context, tmp_path):
    # The Dockerfile's own command, in the build context docker would send, into a scratch
    # venv, offline from the uv cache; then every process the image runs must import.
    venv = tmp_path / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    command = [*uv(), "sync", "--frozen", "--no-dev", "--no-editable", "--package", image.package]
    subprocess.run(
        [*command, "--offline", "--quiet"], cwd=context, env=env, check=True, timeout=300
    )
    modules = sorted({w.module for w in WORKLOADS if w.image == image})
    # Imported, not just found: a dependency missing from the member's closure fails here.
    probe = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    print(importlib.import_module(name).__file__)\n"
    )
    result = subprocess.run(
        [str(venv / "bin/python"), "-I", "-c", probe, *modules],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # Installed into the venv, not pointing back at the workspace sources (non-editable).
    origins = result.stdout.split()
    assert len(origins) == len(modules)
    assert all(origin.startswith(str(venv)) for origin in origins), origins
    installed = {
        p.name.split("-")[0] for p in (venv / "lib/python3.11/site-packages").glob("*.dist-info")
    }
    assert image.package.replace("-", "_") in installed
    assert "urr_deploycheck" not in installed
    assert "urr_devstack" not in installed
    assert "pytest" not in installed
    if image.native:
        _compile_as_the_build_stage_does(venv, env, modules, tmp_path)


def _compile_as_the_build_stage_does(
    venv: Path, env: dict[str, str], modules: list[str], cwd: Path
) -> None:
    """The Dockerfile's compile step in the installed layout (site-packages, no project
    configuration), offline; then the image's processes start with ``URR_NATIVE=1`` and the
    compiled modules load from the venv, and the build tools are gone again."""
    python = str(venv / "bin/python")
    versions = locked_versions(REPO, NATIVE_BUILD_PACKAGES)
    for command in native_build_commands(python, versions):
        if command[0] == "uv":  # (the index, not only the cache: pip resolves the pins)
            command = [*uv(), *command[1:]]
        subprocess.run(command, cwd=cwd, env=env, check=True, timeout=600)
    probe = (
        "import importlib, sys\n"
        "from urr_common import native\n"
        "native.require(native.status())\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "for name in sorted(native.status().compiled):\n"
        "    print(importlib.import_module(name).__file__)\n"
    )
    result = subprocess.run(
        [python, "-I", "-c", probe, *modules],
        cwd=cwd,
        env={"URR_NATIVE": "1", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    compiled = result.stdout.split()
    assert len(compiled) == len(compiled_modules())
    assert all(f.startswith(str(venv)) and f.endswith(".so") for f in compiled), compiled
    left = {
        p.name.split("-")[0] for p in (venv / "lib/python3.11/site-packages").glob("*.dist-info")
    }
    assert not left & {"mypy", "setuptools", "librt", "pathspec", "ast_serialize"}


async def _run_healthcheck(port: int) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-c",
        healthcheck_code(9),
        env={"URR_HTTP__PORT": str(port), "PATH": os.environ["PATH"]},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=30)


async def test_the_healthcheck_command_follows_readiness(aiohttp_server):
    app = create_service_app(ServiceSettings())
    ready = {"value": True}

    async def check() -> None:
        if not ready["value"]:
            raise RuntimeError("dependency down")

    app[READINESS_KEY].add_check("dependency", check)
    server = await aiohttp_server(app)
    assert await _run_healthcheck(server.port) == 0
    ready["value"] = False
    assert await _run_healthcheck(server.port) == 1


def test_the_healthcheck_reads_the_port_the_image_sets():
    for image in IMAGES:
        code = healthcheck_code(image.port)
        compile(code, "<healthcheck>", "exec")
        assert f"os.environ.get('URR_HTTP__PORT', '{image.port}')" in code
        rendered = render_dockerfile(image, locked_versions(REPO, NATIVE_BUILD_PACKAGES))
        assert code.replace('"', '\\"') in rendered
