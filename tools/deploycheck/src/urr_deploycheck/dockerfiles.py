"""``services/<folder>/Dockerfile`` for every image of the table, from one template.

Two stages: ``build`` installs exactly the image's workspace member and its locked closure
(``uv sync --frozen --no-dev --no-editable --package <member>``) into ``/opt/venv`` with
bytecode compiled ahead; ``runtime`` is the same slim Python with that venv only, running as
uid 1000, writing nothing outside ``/tmp`` (read-only root filesystem), with a healthcheck that
asks ``/health/ready`` through Python's urllib (no curl in the image).
"""

from __future__ import annotations

from pathlib import Path

from urr_deploycheck.services import IMAGES, Image

PYTHON_IMAGE = "python:3.11-slim-bookworm"
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


def render_dockerfile(image: Image) -> str:
    env = [
        ("PATH", "/opt/venv/bin:$PATH"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        ("PYTHONUNBUFFERED", "1"),
        ("HOME", CONTAINER_TMP),
        ("TMPDIR", CONTAINER_TMP),
        ("URR_HTTP__HOST", "0.0.0.0"),
        ("URR_HTTP__PORT", str(image.port)),
        *IMAGE_ENV.get(image.folder, ()),
    ]
    env_lines = " \\\n    ".join(f"{key}={value}" for key, value in env)
    health = healthcheck_code(image.port).replace('"', '\\"')
    return f"""\
# syntax=docker/dockerfile:1
# Generated from tools/deploycheck (services.py, dockerfiles.py): `uv run urr-deploy-generate`.
# Build from the repository root:
#   docker build -f services/{image.folder}/Dockerfile -t {image.name} .
ARG PYTHON_IMAGE={PYTHON_IMAGE}

FROM {UV_IMAGE} AS uv

FROM ${{PYTHON_IMAGE}} AS build
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
    return {
        dockerfile_path(repo, image): render_dockerfile(image) for image in present_images(repo)
    }
