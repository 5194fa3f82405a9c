"""The dashboard's per-second history: sums per second, a fixed window, no event is lost."""

from __future__ import annotations

import pytest

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.observe.history import SERIES, PoolHistory


@pytest.fixture
def database() -> Database:
    # Never started: the monitor works without a pool, which is all this needs.
    return Database(DatabaseSettings(url="sqlite:///never-opened.db"))


def checkout(database: Database, waited: float, held: float) -> None:
    """What the pool reports for one checkout: a wait, a checkout, a hold."""
    monitor = database.monitor
    monitor._waited(waited)
    monitor.checkouts_total += 1
    for observer in monitor._hold_observers:
        observer(held)


def test_a_point_sums_its_second(database: Database) -> None:
    history = PoolHistory(database.monitor, window=10)
    checkout(database, 0.001, 0.010)
    checkout(database, 0.003, 0.030)
    history.sample(now=100.0)
    history.sample(now=101.0)  # a quiet second
    series = history.as_dict()["series"]
    assert series["t"] == [100.0, 101.0]
    assert series["checkouts"] == [2, 0]
    assert series["wait_count"] == [2, 0]
    assert series["wait_avg_ms"] == [2.0, None]
    assert series["wait_max_ms"] == [3.0, None]
    assert series["hold_count"] == [2, 0]
    assert series["hold_avg_ms"] == [20.0, None]
    assert series["hold_max_ms"] == [30.0, None]
    assert set(series) == set(SERIES)


def test_checkouts_before_the_history_are_not_reported_as_one_burst(database: Database) -> None:
    for _ in range(50):
        checkout(database, 0.0, 0.0)
    history = PoolHistory(database.monitor)
    checkout(database, 0.0, 0.0)
    history.sample(now=1.0)
    assert history.as_dict()["series"]["checkouts"] == [1]


def test_the_window_keeps_the_last_points(database: Database) -> None:
    history = PoolHistory(database.monitor, window=3)
    for second in range(5):
        checkout(database, 0.0, 0.0)
        history.sample(now=float(second))
    stats = history.as_dict()
    assert stats["series"]["t"] == [2.0, 3.0, 4.0]
    assert stats["now"]["checkouts_total"] == 5


def test_empty_history(database: Database) -> None:
    stats = PoolHistory(database.monitor).as_dict()
    assert stats["name"] == "primary"
    assert all(column == [] for column in stats["series"].values())
