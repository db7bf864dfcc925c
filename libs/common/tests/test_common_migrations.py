from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from urr_common.migrations import MigrationError, apply_migrations, discover


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


async def _tables(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {row["table_name"] for row in rows}


async def test_applies_in_order_once(postgres_dsn: str, tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "m",
        {
            "002_add_column.sql": "ALTER TABLE things ADD COLUMN note text;",
            "001_create.sql": "CREATE TABLE things (id int PRIMARY KEY);",
            "README.md": "not a migration",
        },
    )
    migrations = discover(folder)
    assert [m.version for m in migrations] == [1, 2]
    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        assert await apply_migrations(pool, "demo", migrations) == [
            "001_create.sql",
            "002_add_column.sql",
        ]
        assert await apply_migrations(pool, "demo", migrations) == []
        assert {"things", "schema_migrations"} <= await _tables(pool)


async def test_failed_migration_leaves_nothing_behind(postgres_dsn: str, tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "m",
        {
            "001_ok.sql": "CREATE TABLE kept (id int);",
            "002_broken.sql": "CREATE TABLE half (id int); SELECT no_such_function();",
        },
    )
    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await apply_migrations(pool, "demo", discover(folder))
        assert "half" not in await _tables(pool)
        versions = await pool.fetch("SELECT version FROM schema_migrations")
        assert [row["version"] for row in versions] == [1]


async def test_edited_applied_migration_is_refused(postgres_dsn: str, tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"001_create.sql": "CREATE TABLE t (id int);"})
    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2) as pool:
        await apply_migrations(pool, "demo", discover(folder))
        _write(folder, {"001_create.sql": "CREATE TABLE t (id bigint);"})
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(pool, "demo", discover(folder))


async def test_replicas_starting_together_apply_once(postgres_dsn: str, tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"001_create.sql": "CREATE TABLE t (id int);"})
    async with asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4) as pool:
        results = await asyncio.gather(
            *(apply_migrations(pool, "demo", discover(folder)) for _ in range(4))
        )
    assert sorted(len(applied) for applied in results) == [0, 0, 0, 1]


def test_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"001_a.sql": "", "001_b.sql": ""})
    with pytest.raises(MigrationError, match="numbered 1"):
        discover(folder)
