"""ItemSettings: defaults, environment names, and messages that name the variable."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from fastapi_dbpool.errors import ConnectFailed, PoolTimeout, SettingsError
from users_api.settings import ItemSettings
from users_api.worker import is_transient

NAMES = (
    "ITEM_WORKERS",
    "ITEM_LEASE_S",
    "ITEM_MAX_ATTEMPTS",
    "ITEM_SWEEP_S",
    "ITEM_PROCESSING_DELAY_MS",
    "ITEM_SHUTDOWN_GRACE_S",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = ItemSettings.from_env()
    assert (settings.workers, settings.lease_s, settings.max_attempts) == (2, 30.0, 5)
    assert (settings.sweep_s, settings.processing_delay_ms) == (5.0, 0)


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITEM_WORKERS", "4")
    monkeypatch.setenv("ITEM_LEASE_S", "2.5")
    monkeypatch.setenv("ITEM_PROCESSING_DELAY_MS", "100")
    settings = ItemSettings.from_env()
    assert (settings.workers, settings.lease_s, settings.processing_delay_ms) == (4, 2.5, 100)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ITEM_WORKERS", "-1"),
        ("ITEM_WORKERS", "many"),
        ("ITEM_LEASE_S", "0"),
        ("ITEM_MAX_ATTEMPTS", "0"),
        ("ITEM_SWEEP_S", "-5"),
        ("ITEM_PROCESSING_DELAY_MS", "-1"),
        ("ITEM_SHUTDOWN_GRACE_S", "x"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        ItemSettings.from_env()


def test_lease_must_outlast_the_processing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITEM_LEASE_S", "1")
    monkeypatch.setenv("ITEM_PROCESSING_DELAY_MS", "800")
    with pytest.raises(SettingsError, match=r"ITEM_LEASE_S=1 .*ITEM_PROCESSING_DELAY_MS=800"):
        ItemSettings.from_env()


def test_app_refuses_to_start_with_bad_item_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from users_api.main import create_app

    monkeypatch.setenv("ITEM_MAX_ATTEMPTS", "0")
    with pytest.raises(SettingsError, match="ITEM_MAX_ATTEMPTS"):
        create_app()


class _Orig(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (PoolTimeout("busy"), True),
        (ConnectFailed("down"), True),
        (ConnectionResetError(), True),
        (sa_exc.OperationalError("x", {}, _Orig("")), True),
        (sa_exc.DBAPIError("x", {}, _Orig("40001")), True),  # serialization failure
        (sa_exc.DBAPIError("x", {}, _Orig("40P01")), True),  # deadlock
        (sa_exc.DBAPIError("x", {}, _Orig("57P01")), True),  # admin shutdown
        # The library's taxonomy decides: lock_not_available is answered 503 there.
        (sa_exc.DBAPIError("x", {}, _Orig("55P03")), True),
        # An OperationalError is not transient because of its class: a division by
        # zero (22012, invalid value, answered 422) would fail again.
        (sa_exc.OperationalError("x", {}, _Orig("22012")), False),
        (sa_exc.IntegrityError("x", {}, _Orig("23505")), False),
        (ValueError("bug"), False),
    ],
)
def test_transient_errors(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient
