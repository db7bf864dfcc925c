"""``services/<folder>/Dockerfile`` for every image of the table, from one template.

Two stages: ``build`` installs exactly the image's workspace member and its locked closure
(``uv sync --frozen --no-dev --no-editable --package <member>``) into ``/opt/venv`` with
bytecode compiled ahead; ``runtime`` is the same slim Python with that venv only, running as
uid 1000, writing nothing outside ``/tmp`` (read-only root filesystem), with a healthcheck that
asks ``/health/ready`` through Python's urllib (no curl in the image). An image whose request
path is compiled (``Image.native``) builds in the full Python image of the same release (gcc
and the headers; its runtime stays slim), compiles with mypyc's tools pinned from ``uv.lock``
and removes them, and runs with ``URR_NATIVE=1``: it refuses to start without the build.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from urr_deploycheck.services import IMAGES, Image

PYTHON_IMAGE = "python:3.11-slim-bookworm"
#: The build stage of a compiled image: the same Python release with a C compiler.
PYTHON_BUILD_IMAGE = "python:3.11-bookworm"
#: mypyc's build tools (mypy ships mypyc; setuptools drives the compiler) and what mypy needs
#: beyond the gateway's own closure; installed for the build, then removed.
NATIVE_BUILD_PACKAGES = ("mypy", "ast-serialize", "librt", "pathspec", "setuptools")
#: The uv that wrote uv.lock; the image copies its static binary.
UV_IMAGE = "ghcr.io/astral-sh/uv:0.13.9"
UID = 1000
#: The container's only writable path (a tmpfs or emptyDir), not this machine's /tmp.
CONTAINER_TMP = "/tmp"  # noqa: S108

#: Variables the images set besides the listener's. The gateway's 1 MiB body limit is its own
#: default too (``GatewayHttpSettings``); the image pins it so a changed code default shows up
#: as a diff here rather than as a different limit in production.
IMAGE_ENV: dict[str, tuple[tuple[str, str], ...]] = {
    "gateway": (("URR_HTTP__MAX_BODY_BYTES", "1048576"),),
}

_HEALTHCHECK = (
    "import os, urllib.request; "
    "urllib.request.urlopen('http://127.0.0.1:%s/health/ready' "
    "% os.environ.get('URR_HTTP__PORT', '{port}'), timeout=2)"
)


def dockerfile_path(repo: Path, image: Image) -> Path:
    return repo / "services" / image.folder / "Dockerfile"


def healthcheck_code(port: int) -> str:
    """The Python one-liner the image's HEALTHCHECK runs (exit 1 unless ready answers 200)."""
    return _HEALTHCHECK.replace("{port}", str(port))


def locked_versions(repo: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The versions ``uv.lock`` pins for ``names`` (one version each in this lock)."""
    lock = tomllib.loads((repo / "uv.lock").read_text())
    pinned = {package["name"]: package["version"] for package in lock["package"]}
    missing = [name for name in names if name not in pinned]
    if missing:
        raise ValueError(f"uv.lock pins no {', '.join(missing)}")
    return {name: pinned[name] for name in names}


def native_build_commands(python: str, versions: Mapping[str, str]) -> list[list[str]]:
    """The build stage's compile step, also run by the image test in a scratch venv."""
    pins = [f"{name}=={versions[name]}" for name in NATIVE_BUILD_PACKAGES]
    return [
        ["uv", "pip", "install", "--python", python, *pins],
        [python, "-m", "urr_common.native.build"],
        ["uv", "pip", "uninstall", "--python", python, *NATIVE_BUILD_PACKAGES],
    ]


def _native_step(versions: Mapping[str, str]) -> str:
    lines = [
        " ".join(command) for command in native_build_commands("/opt/venv/bin/python", versions)
    ]
    return (
        "# The request path compiled with mypyc (urr_common.native), its tools pinned from the\n"
        "# lock and removed after; the runtime refuses to start without it (URR_NATIVE=1).\n"
        "RUN --mount=type=cache,target=/root/.cache/uv \\\n    " + " \\\n && ".join(lines) + "\n"
    )


def render_dockerfile(image: Image, versions: Mapping[str, str] | None = None) -> str:
    """``versions``: the lock's pins of ``NATIVE_BUILD_PACKAGES`` (a native image needs them)."""
    env = [
        ("PATH", "/opt/venv/bin:$PATH"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
        ("HOME", CONTAINER_TMP),
        ("TMPDIR", CONTAINER_TMP),
        ("URR_HTTP__HOST", "0.0.0.0"),
        ("URR_HTTP__PORT", str(image.port)),
        *IMAGE_ENV.get(image.folder, ()),
        *((("URR_NATIVE", "1"),) if image.native else ()),
    ]
    if image.native and versions is None:
        raise ValueError(f"{image.folder}: a compiled image needs the lock's build tool versions")
    build_image = "${PYTHON_BUILD_IMAGE}" if image.native else "${PYTHON_IMAGE}"
    build_arg = f"ARG PYTHON_BUILD_IMAGE={PYTHON_BUILD_IMAGE}\n" if image.native else ""
    native_step = _native_step(versions) if image.native and versions is not None else ""
    env_lines = " \\\n    ".join(f"{key}={value}" for key, value in env)
    health = healthcheck_code(image.port).replace('"', '\\"')
    return f"""\
# syntax=docker/dockerfile:1
# Generated from tools/deploycheck (services.py, dockerfiles.py): `uv run urr-deploy-generate`.
# Build from the repository root:
#   docker build -f services/{image.folder}/Dockerfile -t {image.name} .
ARG PYTHON_IMAGE={PYTHON_IMAGE}
{build_arg}
FROM {UV_IMAGE} AS uv

FROM {build_image} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \\
    UV_LINK_MODE=copy \\
    UV_PYTHON_DOWNLOADS=never \\
    UV_PYTHON=/usr/local/bin/python3 \\
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
COPY . .
# Only this member and its locked closure, installed as regular (non-editable) packages.
RUN --mount=type=cache,target=/root/.cache/uv \\
    uv sync --frozen --no-dev --no-editable --package {image.package}
{native_step}
FROM ${{PYTHON_IMAGE}} AS runtime
RUN groupadd --system --gid {UID} urr \\
 && useradd --system --uid {UID} --gid {UID} --home-dir /tmp --no-create-home \\
    --shell /usr/sbin/nologin urr \\
 && mkdir -p /app/.urr \\
 && chown {UID}:{UID} /app/.urr
COPY --from=build /opt/venv /opt/venv
# Nothing is written outside /tmp (and the optional state volume /app/.urr): the root
# filesystem may be mounted read-only.
ENV {env_lines}
WORKDIR /app
USER {UID}:{UID}
EXPOSE {image.port}
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
    CMD ["python", "-c", "{health}"]
CMD ["python", "-m", "{image.module}"]
"""


def present_images(repo: Path) -> list[Image]:
    """Images whose service folder is a workspace member already. A Dockerfile alone must not
    create a folder: ``services/*`` is a workspace glob and uv rejects a member without a
    ``pyproject.toml``."""
    return [
        image for image in IMAGES if (repo / "services" / image.folder / "pyproject.toml").is_file()
    ]


def expected_files(repo: Path) -> dict[Path, str]:
    versions = locked_versions(repo, NATIVE_BUILD_PACKAGES)
    return {
        dockerfile_path(repo, image): render_dockerfile(image, versions)
        for image in present_images(repo)
    }
