"""The connection budget and the pool size recommendation, on worked examples.

The expected figures are worked out by hand in the comments, not recomputed with the
formula under test.
"""

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


@pytest.mark.parametrize(
    ("workers", "pool_size", "max_overflow", "pools", "in_use", "needed", "available", "fits"),
    [
        # 4 x (10 + 5 + 1) = 64; 100 - 3 reserved - 20 in use = 77
        (4, 10, 5, 1, 20, 64, 77, True),
        # 5 x 16 = 80 > 77
        (5, 10, 5, 1, 20, 80, 77, False),
        # 7 x (10 + 0 + 1) = 77 = 77: exactly full still fits
        (7, 10, 0, 1, 20, 77, 77, True),
        # one more client elsewhere: 77 > 100 - 3 - 21 = 76
        (7, 10, 0, 1, 21, 77, 76, False),
        # the sync pool doubles pool and overflow, not the probe: 2 x (2 x 15 + 1) = 62
        (2, 10, 5, 2, 20, 62, 77, True),
        # 3 x 31 = 93 > 77
        (3, 10, 5, 2, 20, 93, 77, False),
        # a server already full: 1 x (1 + 0 + 1) = 2 > 100 - 3 - 97 = 0
        (1, 1, 0, 1, 97, 2, 0, False),
    ],
)
def test_budget_worked_examples(
    workers: int,
    pool_size: int,
    max_overflow: int,
    pools: int,
    in_use: int,
    needed: int,
    available: int,
    fits: bool,
) -> None:
    b = ConnectionBudget(
        workers=workers,
        pool_size=pool_size,
        max_overflow=max_overflow,
        max_connections=100,
        reserved_connections=3,
        in_use_by_others=in_use,
        pools=pools,
    )
    assert (b.needed, b.available, b.fits) == (needed, available, fits)


def test_budget_with_the_sync_pool_says_so() -> None:
    text = budget(workers=2, pools=2).describe()
    assert "2 worker(s) x (2 x (10 pool + 5 overflow) + 1 probe) = 62 connections" in text


@given(
    workers=st.integers(1, 64),
    pool_size=st.integers(1, 100),
    max_overflow=st.integers(0, 100),
    in_use=st.integers(0, 10_000),
)
def test_more_of_anything_never_makes_a_budget_fit(
    workers: int, pool_size: int, max_overflow: int, in_use: int
) -> None:
    """Monotonic in every input: a budget that does not fit is not saved by adding more."""
    values = {
        "workers": workers,
        "pool_size": pool_size,
        "max_overflow": max_overflow,
        "max_connections": 1000,
        "reserved_connections": 3,
        "in_use_by_others": in_use,
    }
    b = ConnectionBudget(**values)
    for key in ("workers", "pool_size", "max_overflow", "in_use_by_others"):
        more = ConnectionBudget(**(values | {key: values[key] + 1}))
        assert more.needed >= b.needed and more.available <= b.available
        if not b.fits:
            assert not more.fits, key


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
    # 20 - 3 reserved - 7 in use = 10 free slots; 10 // 2 workers - 1 probe = 4, below
    # HikariCP's (8 x 2 + 0) // 2 = 8. Then 2 x (4 + 1 probe) = 10: exactly the free slots.
    assert tight.available == 10
    assert rec.pool_size == 4
    assert rec.database_connections == 16
    assert "capped by the server's free slots: 10 available // 2 worker(s) - 1 probe = 4" in (
        " ".join(rec.reasons)
    )


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
