"""Write (or check) the files generated from the tables: Dockerfiles and the Grafana dashboards.

uv run urr-deploy-generate           # rewrite them
uv run urr-deploy-generate --check   # exit 1 when one is out of date (the tests do this)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from urr_deploycheck import dashboard, dockerfiles, ratelimit_dashboard

DASHBOARD = Path("monitoring/grafana/urr.json")


def expected_files(repo: Path) -> dict[Path, str]:
    files = dockerfiles.expected_files(repo)
    files[repo / DASHBOARD] = dashboard.render()
    files[repo / ratelimit_dashboard.PATH] = ratelimit_dashboard.render()
    return files


def stale_files(repo: Path) -> list[Path]:
    """Generated files whose content differs from what the tables give."""
    return [
        path
        for path, text in expected_files(repo).items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate Dockerfiles and the Grafana dashboard.")
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.repo)
        for path in stale:
            print(f"stale: {path} (run `uv run urr-deploy-generate`)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in expected_files(args.repo).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
