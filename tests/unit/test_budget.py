"""The connection budget and the pool size recommendation, as arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapi_dbpool import DatabaseSettings
from fastapi_dbpool.errors import SettingsError
from fastapi_dbpool.ops.budget import (
    ConnectionBudget,
    PoolerFacts,
    ServerFacts,
    connection_budget,
    recommend_pool_size,
    workers_from_env,
)


def budget(**overrides: int) -> ConnectionBudget:
    values = {
        "workers": 4,
        "pool_size": 10,
        "max_overflow": 5,
        "max_connections": 100,
        "reserved_connections": 3,
        "in_use_by_others": 20,
    }
    return ConnectionBudget(**(values | overrides))


def test_budget_counts_pool_overflow_and_probe_per_worker() -> None:
    b = budget()
    assert b.per_worker == 16
    assert b.needed == 64
    assert b.server_limit == 97
    assert b.available == 77
    assert b.fits
    assert not budget(workers=5).fits  # 80 > 77
    text = b.describe()
    assert "4 worker(s) x (10 pool + 5 overflow + 1 probe) = 64" in text
    assert "max_connections 100 - 3 reserved" in text
    assert "20 in use by other clients: 77 available" in text


def test_budget_counts_the_sync_pool_of_def_endpoints() -> None:
    # 4 workers x (2 x (10 + 5) + 1 probe) = 4 x 31 = 124 > 77 available.
    b = budget(pools=2)
    assert b.per_worker == 31
    assert b.needed == 124
    assert not b.fits
    assert "4 worker(s) x (2 x (10 pool + 5 overflow) + 1 probe) = 124" in b.describe()


@given(
    workers=st.integers(1, 64),
    pool_size=st.integers(1, 100),
    max_overflow=st.integers(0, 100),
    max_connections=st.integers(10, 10_000),
    reserved=st.integers(0, 9),
    in_use=st.integers(0, 10_000),
)
def test_budget_fits_exactly_when_every_worker_can_open_its_pool(
    workers: int,
    pool_size: int,
    max_overflow: int,
    max_connections: int,
    reserved: int,
    in_use: int,
) -> None:
    b = ConnectionBudget(workers, pool_size, max_overflow, max_connections, reserved, in_use)
    assert b.fits == (
        workers * (pool_size + max_overflow + 1) <= max_connections - reserved - in_use
    )


def test_budget_excludes_own_connections_and_does_not_apply_behind_a_pooler() -> None:
    settings = DatabaseSettings(url="postgresql://u@h/db", pool_size=7, max_overflow=1)
    facts = ServerFacts(
        backend="postgresql",
        product="PostgreSQL",
        version="16",
        max_connections=200,
        superuser_reserved_connections=3,
        reserved_connections=2,
        connections_in_use=40,
        connections_of_app=9,
    )
    b = connection_budget(settings, facts, workers=3)
    assert b is not None
    # 40 in use - 9 of the app's pools (counted by the budget itself) - 1 reading the facts
    assert b.in_use_by_others == 30
    assert b.reserved_connections == 5
    assert b.needed == 3 * 9
    behind = ServerFacts(**{**facts.as_dict(), "pooler": PoolerFacts("PgBouncer", ("pid",))})
    assert connection_budget(settings, behind, workers=3) is None


def test_recommendation_follows_hikaricp_and_splits_across_workers() -> None:
    one = recommend_pool_size(
        workers=1, db_cores=4, db_cores_source="given", spindles=1, spindles_source="given"
    )
    assert (one.database_connections, one.pool_size, one.max_overflow) == (9, 9, 0)
    assert any("4 x 2 + 1 = 9" in reason for reason in one.reasons)
    four = recommend_pool_size(
        workers=4, db_cores=4, db_cores_source="given", spindles=1, spindles_source="given"
    )
    assert four.pool_size == 2
    assert any("9 // 4 = 2" in reason for reason in four.reasons)


def test_recommendation_keeps_one_connection_when_workers_outnumber_the_formula() -> None:
    rec = recommend_pool_size(
        workers=16, db_cores=2, db_cores_source="given", spindles=0, spindles_source="given"
    )
    assert rec.pool_size == 1
    assert any("more workers than the database can keep busy" in r for r in rec.reasons)


def test_recommendation_is_capped_by_the_free_slots() -> None:
    tight = budget(workers=2, max_connections=20, reserved_connections=3, in_use_by_others=7)
    rec = recommend_pool_size(
        workers=2,
        db_cores=8,
        db_cores_source="given",
        spindles=0,
        spindles_source="given",
        budget=tight,
    )
    # 10 free slots // 2 workers - 1 probe = 4, below the formula's 16 // 2 = 8
    assert rec.pool_size == 4
    assert any("capped by the server's free slots" in r for r in rec.reasons)
    assert 2 * (rec.pool_size + 1) <= tight.available


def test_recommendation_says_when_there_is_no_room_at_all() -> None:
    full = budget(workers=4, max_connections=10, reserved_connections=3, in_use_by_others=7)
    rec = recommend_pool_size(
        workers=4, db_cores=2, db_cores_source="g", spindles=1, spindles_source="g", budget=full
    )
    assert rec.pool_size == 1
    assert any("raise max_connections" in r for r in rec.reasons)


@pytest.mark.parametrize(("raw", "expected"), [(None, 1), ("", 1), ("3", 3), (" 8 ", 8)])
def test_workers_come_from_web_concurrency(
    monkeypatch: pytest.MonkeyPatch, raw: str | None, expected: int
) -> None:
    if raw is None:
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("WEB_CONCURRENCY", raw)
    assert workers_from_env() == expected


@pytest.mark.parametrize("raw", ["0", "-2", "four", "1.5"])
def test_invalid_web_concurrency_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", raw)
    with pytest.raises(SettingsError, match="WEB_CONCURRENCY"):
        workers_from_env()
