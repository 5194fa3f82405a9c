"""Alembic: upgrade from empty, downgrade to base, and no drift between models and migrations."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from fastapi_dbpool import DatabaseSettings
from tests.backends import alembic, postgres_database, require_postgres


@pytest.fixture
def empty_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        require_postgres()
        with postgres_database("dbpool_migrations") as url:
            yield url


def _tables(url: str) -> set[str]:
    engine = create_engine(DatabaseSettings(url=url).sync_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_check_downgrade(empty_database: str) -> None:
    up = alembic(empty_database, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert {"users", "items", "alembic_version"} <= _tables(empty_database)

    # autogenerate against the migrated database finds nothing: models and migrations agree
    check = alembic(empty_database, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr

    down = alembic(empty_database, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert _tables(empty_database) <= {"alembic_version"}

    again = alembic(empty_database, "upgrade", "head")
    assert again.returncode == 0, again.stderr


def test_alembic_output_never_shows_the_password(tmp_path: Path) -> None:
    require_postgres()
    with postgres_database("dbpool_migrations") as url:
        with_password = url.replace("postgres@", "postgres:CANARY-pw-123@")
        result = alembic(with_password, "upgrade", "head")
        assert result.returncode == 0, result.stderr
        assert "CANARY-pw-123" not in result.stdout + result.stderr
