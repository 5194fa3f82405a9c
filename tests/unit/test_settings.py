"""DatabaseSettings: environment names, URL mapping, validation messages, redaction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.errors import SettingsError
from fastapi_dbpool.settings import redact_url
from tests.strategies import passwords

CANARY = "s3cr3t-CANARY"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "DB_POOL_SIZE",
        "DB_MAX_OVERFLOW",
        "DB_POOL_TIMEOUT",
        "DB_POOL_RECYCLE",
        "DB_POOL_PRE_PING",
        "DB_ECHO",
        "DB_STATEMENT_TIMEOUT_MS",
        "DB_NO_ANSWER_TIMEOUT_S",
    ):
        monkeypatch.delenv(name, raising=False)


def test_no_url_is_an_error_that_says_what_to_do() -> None:
    # No silent default: a library that opened ./something.db would hide the mistake.
    with pytest.raises(SettingsError, match=r"DATABASE_URL is not set.*Database\(url=\.\.\.\)"):
        DatabaseSettings.from_env()


def test_defaults() -> None:
    settings = DatabaseSettings.from_env(url="sqlite:///./app.db")
    assert settings.sqlalchemy_url.drivername == "sqlite+aiosqlite"
    assert settings.sqlalchemy_url.database == "./app.db"
    assert settings.pool_pre_ping is True
    assert settings.statement_timeout_ms == 0
    assert settings.no_answer_timeout_s == 30.0


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/app")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "3")
    monkeypatch.setenv("DB_POOL_TIMEOUT", "2.5")
    monkeypatch.setenv("DB_POOL_RECYCLE", "60")
    monkeypatch.setenv("DB_POOL_PRE_PING", "false")
    monkeypatch.setenv("DB_ECHO", "1")
    monkeypatch.setenv("DB_STATEMENT_TIMEOUT_MS", "1500")
    monkeypatch.setenv("DB_NO_ANSWER_TIMEOUT_S", "2.5")
    settings = DatabaseSettings.from_env()
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (7, 3, 2.5)
    assert (settings.pool_recycle, settings.pool_pre_ping, settings.echo) == (60, False, True)
    assert settings.statement_timeout_ms == 1500
    assert settings.no_answer_timeout_s == 2.5
    assert settings.backend == "postgresql"


@pytest.mark.parametrize(
    ("given_url", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("sqlite:///./x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
    ],
)
def test_url_schemes_map_to_async_drivers(given_url: str, driver: str) -> None:
    assert DatabaseSettings(url=given_url).sqlalchemy_url.drivername == driver


@pytest.mark.parametrize(
    ("given_url", "says"),
    [
        ("postgresql+psycopg2://u:secret@h/db", "names psycopg2, which has no async mode"),
        ("postgresql+psycopg://u:secret@h/db", "names psycopg, but async sessions here run on"),
    ],
)
def test_driver_that_cannot_be_honoured_is_refused_not_swapped(given_url: str, says: str) -> None:
    with pytest.raises(SettingsError) as raised:
        DatabaseSettings.from_env(url=given_url)
    message = str(raised.value)
    assert "DATABASE_URL" in message and says in message
    assert "write postgresql://u:***@h/db" in message
    assert "secret" not in message


def test_sync_url_uses_sync_drivers() -> None:
    assert DatabaseSettings(url="postgres://u@h/db").sync_url.drivername == "postgresql+psycopg"
    assert DatabaseSettings(url="sqlite:///x.db").sync_url.drivername == "sqlite+pysqlite"


def test_libpq_sslmode_is_translated_for_asyncpg() -> None:
    url = DatabaseSettings(url="postgresql://u@h/db?sslmode=require").sqlalchemy_url
    assert dict(url.query) == {"ssl": "require"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_POOL_SIZE", "abc"),
        ("DB_POOL_SIZE", "0"),
        ("DB_MAX_OVERFLOW", "-1"),
        ("DB_POOL_TIMEOUT", "0"),
        ("DB_POOL_PRE_PING", "maybe"),
        ("DB_STATEMENT_TIMEOUT_MS", "-5"),
        ("DB_NO_ANSWER_TIMEOUT_S", "-1"),
        ("DB_NO_ANSWER_TIMEOUT_S", "soon"),
        ("DB_NO_ANSWER_TIMEOUT_S", "100000"),
        ("DATABASE_URL", "mysql://u@h/db"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "sqlite:///:memory:"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        DatabaseSettings.from_env()


def test_invalid_url_error_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"mysql://user:{CANARY}@h/db")
    with pytest.raises(SettingsError) as caught:
        DatabaseSettings.from_env()
    assert CANARY not in str(caught.value)
    assert CANARY not in repr(caught.value)


def test_password_never_in_repr_or_str() -> None:
    settings = DatabaseSettings(url=f"postgresql://user:{CANARY}@h:5432/db")
    for text in (repr(settings), str(settings), settings.redacted_url, repr(Database(settings))):
        assert CANARY not in text
    assert "***" in settings.redacted_url
    # ...but SQLAlchemy gets it.
    assert settings.sqlalchemy_url.password == CANARY


@given(password=passwords())
def test_redaction_holds_for_any_password(password: str) -> None:
    settings = DatabaseSettings(url=f"postgresql://user:{password}@h:5432/db")
    assert settings.sqlalchemy_url.password == password
    assert password not in repr(settings)
    assert password not in settings.redacted_url


def test_password_in_the_query_is_redacted_everywhere() -> None:
    # libpq's spelling: postgresql://user@h/db?password=...
    settings = DatabaseSettings.from_env(url=f"postgresql://user@h:5432/db?password={CANARY}")
    for text in (repr(settings), str(settings), settings.redacted_url, repr(Database(settings))):
        assert CANARY not in text
    assert CANARY not in repr(settings.sqlalchemy_url)  # SQLAlchemy's own rendering too
    assert settings.sqlalchemy_url.password == CANARY  # ...and the driver still gets it
    assert CANARY not in redact_url(f"postgresql://u@h/db?sslpassword={CANARY}&password={CANARY}")
    # A URL refused at start shows itself in the message: redacted there too.
    with pytest.raises(SettingsError, match="DATABASE_URL") as refused:
        DatabaseSettings.from_env(url=f"postgresql+psycopg://u@h/db?password={CANARY}")
    assert CANARY not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?foo=bar",
        "postgresql://u@h/db?application_name=x",
        "sqlite:///./app.db?foo=bar",
        "sqlite:///./app.db?mode=ro",  # a SQLite URI option, without uri=true
    ],
)
def test_unknown_query_option_stops_the_start(url: str) -> None:
    option = url.rsplit("?", 1)[1].split("=")[0]
    with pytest.raises(SettingsError, match=rf"DATABASE_URL: .*'{option}'"):
        DatabaseSettings.from_env(url=url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?sslmode=require&command_timeout=5&statement_cache_size=0",
        "postgresql://u@h/db?target_session_attrs=read-write&password=x",
        "sqlite:///./app.db?timeout=3",
        "sqlite:///./app.db?uri=true&cache=private",
    ],
)
def test_query_options_the_driver_accepts_pass(url: str) -> None:
    DatabaseSettings.from_env(url=url)


@pytest.mark.parametrize(
    ("url", "sync_query"),
    [
        (
            "postgresql://u@h/db?sslmode=require&command_timeout=5&statement_cache_size=0",
            {"sslmode": "require"},
        ),
        (
            "postgresql://u@h/db?ssl=verify_full&timeout=2.5",
            {"sslmode": "verify-full", "connect_timeout": "3"},
        ),
        (
            "postgresql://u@h/db?target_session_attrs=read-write&prepared_statement_cache_size=0",
            {"target_session_attrs": "read-write"},
        ),
        ("postgresql://u@h/db?max_cacheable_statement_size=10&max_cached_statement_lifetime=5", {}),
    ],
)
def test_sync_url_carries_options_psycopg_accepts(url: str, sync_query: dict[str, str]) -> None:
    from psycopg.conninfo import make_conninfo

    sync = DatabaseSettings.from_env(url=url).sync_url
    assert dict(sync.query) == sync_query
    make_conninfo("", **dict(sync.query))  # libpq's own check: no "invalid connection option"


@pytest.mark.parametrize(
    ("url", "option"),
    [
        ("postgresql://u@h/db?servicefile=/x", "servicefile"),  # asyncpg only
        ("postgresql://u@h/db?sslmode=on", "sslmode"),
        ("postgresql://u@h/db?ssl=true", "sslmode"),
        ("postgresql://u@h/db?timeout=soon", "timeout"),
        ("postgresql://u@h/db?command_timeout=x", "command_timeout"),
    ],
)
def test_query_option_one_driver_refuses_stops_the_start(url: str, option: str) -> None:
    with pytest.raises(SettingsError, match=rf"DATABASE_URL: .*{option}"):
        DatabaseSettings.from_env(url=url)


def test_replica_query_option_names_its_variable() -> None:
    with pytest.raises(SettingsError, match=r"DATABASE_REPLICA_URL: .*'foo'"):
        DatabaseSettings.from_env(
            url="postgresql://u@h/db", replica_url="postgresql://u@r/db?foo=1"
        )


def test_unparseable_url_is_fully_redacted() -> None:
    assert redact_url("::::") == "<unparseable database URL>"


@given(
    size=st.integers(min_value=1, max_value=1000),
    overflow=st.integers(min_value=0, max_value=1000),
    timeout=st.floats(min_value=0.001, max_value=3600),
)
def test_valid_pool_numbers_round_trip(size: int, overflow: int, timeout: float) -> None:
    settings = DatabaseSettings(
        url="sqlite:///./app.db", pool_size=size, max_overflow=overflow, pool_timeout=timeout
    )
    assert (settings.pool_size, settings.max_overflow, settings.pool_timeout) == (
        size,
        overflow,
        timeout,
    )
