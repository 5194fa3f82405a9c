"""Database settings read from the environment.

Every setting has one environment variable, listed in the table of the README and in
the ``Field`` below. Values are checked when the settings are built, which is when the
app starts: a bad value stops the start with a message naming the variable, never a
stack trace deep in a request.

The URL is held as a secret: ``repr()``, ``str()`` and every message of this module
show it with the password replaced by ``***``.
"""

from __future__ import annotations

import inspect
import math
from functools import cache
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import SettingsError

__all__ = ["DatabaseSettings", "redact_url"]

Backend = Literal["postgresql", "sqlite"]

# Async driver to use for each accepted URL scheme. Plain scheme names are what
# Heroku, Render, docker-compose files and libpq users write; we map them to the
# async driver rather than letting SQLAlchemy pick psycopg2, which would block the loop.
_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
}

# Drivers a URL may name but the library cannot honour: refused, never swapped.
_REFUSED_DRIVERS = {
    "postgresql+psycopg2": "names psycopg2, which has no async mode",
    "postgresql+psycopg": (
        "names psycopg, but async sessions here run on asyncpg (direct connections, "
        "timeouts and pings are built on it) and sync sessions on psycopg 3 already"
    ),
}

# The sync twin of each async driver, for sync sessions and tools that need one.
_SYNC_DRIVERS = {"postgresql+asyncpg": "postgresql+psycopg", "sqlite+aiosqlite": "sqlite+pysqlite"}

# What the SQLite driver takes from the URL's query (SQLAlchemy's pysqlite dialect passes
# these to sqlite3.connect), and, with uri=true, what SQLite's own URI filenames take.
_SQLITE_OPTIONS = frozenset(
    {"uri", "timeout", "isolation_level", "detect_types", "check_same_thread", "cached_statements"}
)
_SQLITE_URI_OPTIONS = frozenset({"mode", "cache", "psow", "nolock", "immutable", "vfs"})
# asyncpg.connect() arguments that cannot come from text, and SQLAlchemy's own options.
_ASYNCPG_OBJECTS = frozenset({"dsn", "loop", "connection_class", "record_class", "server_settings"})
_ASYNCPG_SQLALCHEMY = frozenset({"prepared_statement_cache_size", "sslmode"})


@cache
def _asyncpg_options() -> frozenset[str]:
    """The query options asyncpg accepts: the keyword arguments of its ``connect()``."""
    import asyncpg

    parameters = set(inspect.signature(asyncpg.connect).parameters)
    return frozenset(parameters - _ASYNCPG_OBJECTS) | _ASYNCPG_SQLALCHEMY


# asyncpg's numeric options: a URL's query gives text, asyncpg compares numbers, and
# SQLAlchemy converts only prepared_statement_cache_size. connect_args() passes these
# converted; they are checked at start.
_ASYNCPG_NUMBERS: dict[str, type[int] | type[float]] = {
    "timeout": float,
    "command_timeout": float,
    "statement_cache_size": int,
    "max_cached_statement_lifetime": float,
    "max_cacheable_statement_size": int,
}


def asyncpg_numbers(url: URL) -> dict[str, int | float]:
    """The numeric asyncpg options of *url*'s query, as numbers.

    Raises:
        ValueError: one is not a number; the message names it.
    """
    numbers: dict[str, int | float] = {}
    for key, kind in _ASYNCPG_NUMBERS.items():
        value = url.query.get(key)
        if value is None:
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            numbers[key] = kind(value)
        except ValueError:
            raise ValueError(f"has {key}={value!r}; use a {kind.__name__} once") from None
    return numbers


def _is_secret_option(key: str) -> bool:
    return "password" in key.lower()


# Field name -> environment variable, for messages. Declared once, next to the fields.
_ENV_NAMES: dict[str, str] = {}


def _env(name: str, field: str) -> Any:
    _ENV_NAMES[field] = name
    return AliasChoices(name, field)


def redact_url(url: str | URL) -> str:
    """Return *url* as text with its password replaced by ``***``.

    Text that does not parse as a URL is replaced entirely: it may hold a password in
    a shape we cannot recognise.
    """
    try:
        parsed = url if isinstance(url, URL) else make_url(url)
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"
    secret = [key for key in parsed.query if _is_secret_option(key)]
    if secret:  # ?password=... is as secret as the userinfo's
        parsed = parsed.update_query_dict(dict.fromkeys(secret, "***"))
    return parsed.render_as_string(hide_password=True)


def normalise_url(raw: str) -> URL:
    """Parse *raw* and map it to the async driver; raise ValueError naming the problem."""
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise ValueError("is not a database URL (expected postgresql://… or sqlite:///…)") from None
    refused = _REFUSED_DRIVERS.get(url.drivername)
    if refused is not None:
        plain = redact_url(url.set(drivername="postgresql"))
        raise ValueError(
            f"{refused}; write {plain} (asyncpg for async sessions, psycopg 3 for sync ones)"
        )
    driver = _ASYNC_DRIVERS.get(url.drivername)
    if driver is None:
        known = ", ".join(sorted({d.split("+")[0] + "://" for d in _ASYNC_DRIVERS}))
        raise ValueError(f"uses the unsupported scheme {url.drivername}:// (supported: {known})")
    url = url.set(drivername=driver)
    _check_query_options(url)
    if "password" in url.query:
        # A password in the query goes where SQLAlchemy and every rendering of the URL
        # hide it; the driver receives it the same way (the query's would win anyway).
        password = url.query["password"]
        if not isinstance(password, str):
            raise ValueError("gives the query option 'password' more than once")
        url = url.difference_update_query(["password"]).set(password=password)
    if driver.startswith("sqlite"):
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url.query):
            # Every pooled connection would get its own empty in-memory database.
            raise ValueError(
                "names an in-memory SQLite database; use a file, e.g. sqlite:///./app.db"
            )
    else:
        if "sslmode" in url.query:
            # libpq spells it sslmode, asyncpg spells it ssl; accept the libpq spelling.
            mode = url.query["sslmode"]
            url = url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
        asyncpg_numbers(url)
        libpq_query(url)  # sync sessions and Alembic connect with psycopg: refuse now
    return url


def _check_query_options(url: URL) -> None:
    """Refuse a query option the driver would refuse at every connection attempt."""
    if url.drivername.startswith("sqlite"):
        accepted = _SQLITE_OPTIONS
        if str(url.query.get("uri", "")).lower() in ("true", "1"):
            accepted |= _SQLITE_URI_OPTIONS
        driver = "sqlite3 (add uri=true for SQLite's URI options)"
    else:
        accepted = _asyncpg_options()
        driver = "asyncpg"
    unknown = sorted(set(url.query) - accepted)
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        raise ValueError(
            f"has the query option(s) {names}, which {driver} does not accept "
            f"(accepted: {', '.join(sorted(accepted))})"
        )


# asyncpg's query options that psycopg (libpq) spells differently, or does without: the
# asyncpg-only ones tune its statement cache and its client-side deadline, which the
# sync engine has no use for. Any other option keeps its name and must be one libpq
# accepts (host, port, user, passfile, service, target_session_attrs, krbsrvname, ...).
_LIBPQ_NAMES: dict[str, str | None] = {
    "ssl": "sslmode",
    "timeout": "connect_timeout",
    "database": "dbname",
    "direct_tls": "sslnegotiation",
    "command_timeout": None,
    "statement_cache_size": None,
    "max_cached_statement_lifetime": None,
    "max_cacheable_statement_size": None,
    "prepared_statement_cache_size": None,
}
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@cache
def _libpq_options() -> frozenset[str]:
    """The connection options the installed libpq accepts (psycopg asks it)."""
    from psycopg import pq

    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def libpq_query(url: URL) -> dict[str, str | tuple[str, ...]]:
    """The query of the asyncpg *url*, as options psycopg (libpq) accepts.

    Raises:
        ValueError: an option has no libpq equivalent, or a value neither driver takes;
            the message names the option.
    """
    query: dict[str, str | tuple[str, ...]] = {}
    for key, value in url.query.items():
        name = _LIBPQ_NAMES.get(key, key)
        if name is None:
            continue
        if name not in _libpq_options():
            raise ValueError(
                f"has the query option {key!r}, which psycopg (libpq), the driver of sync "
                "sessions and Alembic, does not accept; remove it"
            )
        if key in ("ssl", "timeout", "direct_tls"):
            if not isinstance(value, str):
                raise ValueError(f"gives the query option {key!r} more than once")
            value = _libpq_value(key, value)
            if not value:
                continue
        query[name] = value
    return query


def _libpq_value(key: str, value: str) -> str:
    if key == "ssl":
        mode = value.replace("_", "-")  # asyncpg takes verify_ca too; libpq does not
        if mode not in _SSL_MODES:
            raise ValueError(f"has sslmode={value!r}; use one of {', '.join(_SSL_MODES)}")
        return mode
    if key == "timeout":  # asyncpg: float seconds (checked by asyncpg_numbers); libpq: whole
        return str(max(1, math.ceil(float(value))))
    # direct_tls: TLS from the first byte, libpq's sslnegotiation=direct.
    if value.lower() in ("true", "1", "yes", "on"):
        return "direct"
    if value.lower() in ("false", "0", "no", "off"):
        return ""
    raise ValueError(f"has direct_tls={value!r}; use true or false")


class DatabaseSettings(BaseSettings):
    """Pool and session settings, read from the environment (or given as keywords).

    Build it with :meth:`from_env` in an app, which turns validation errors into a
    :class:`~fastapi_dbpool.errors.SettingsError` that names the variable to fix.
    """

    model_config = SettingsConfigDict(
        env_file=None, extra="ignore", populate_by_name=True, frozen=True, case_sensitive=False
    )

    # No default: a library that silently opened a SQLite file in the working directory
    # would hide a missing DATABASE_URL until the data went missing.
    url: SecretStr = Field(
        validation_alias=_env("DATABASE_URL", "url"),
        description="Database URL; postgresql:// and sqlite:/// map to asyncpg and aiosqlite.",
    )
    pool_size: int = Field(
        default=10,
        ge=1,
        le=1000,
        validation_alias=_env("DB_POOL_SIZE", "pool_size"),
        description="Connections kept open in the pool.",
    )
    max_overflow: int = Field(
        default=0,
        ge=0,
        le=1000,
        validation_alias=_env("DB_MAX_OVERFLOW", "max_overflow"),
        description="Extra connections opened under load and closed when returned.",
    )
    pool_timeout: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        validation_alias=_env("DB_POOL_TIMEOUT", "pool_timeout"),
        description="Seconds a request waits for a free connection before it is answered 503.",
    )
    pool_recycle: int = Field(
        default=1800,
        ge=-1,
        validation_alias=_env("DB_POOL_RECYCLE", "pool_recycle"),
        description="Seconds after which a connection is replaced; -1 never.",
    )
    pool_pre_ping: bool = Field(
        default=True,
        validation_alias=_env("DB_POOL_PRE_PING", "pool_pre_ping"),
        description="Test each connection as it leaves the pool and replace it if dead.",
    )
    echo: bool = Field(
        default=False,
        validation_alias=_env("DB_ECHO", "echo"),
        description="Log every SQL statement (logger sqlalchemy.engine).",
    )
    statement_timeout_ms: int = Field(
        default=0,
        ge=0,
        le=24 * 3600 * 1000,
        validation_alias=_env("DB_STATEMENT_TIMEOUT_MS", "statement_timeout_ms"),
        description="Server-side statement_timeout on PostgreSQL; 0 = off.",
    )
    no_answer_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=24 * 3600,
        validation_alias=_env("DB_NO_ANSWER_TIMEOUT_S", "no_answer_timeout_s"),
        description=(
            "PostgreSQL: seconds the driver waits for any answer to a statement when "
            "DB_STATEMENT_TIMEOUT_MS is 0 (with it set: DB_STATEMENT_TIMEOUT_MS + 1 s); "
            "past it the connection is discarded and the request answered 503. A statement "
            "silent for longer is abandoned too. 0 = off: wait for TCP to give up."
        ),
    )
    connect_timeout: float = Field(
        default=5.0,
        gt=0,
        le=600,
        validation_alias=_env("DB_CONNECT_TIMEOUT", "connect_timeout"),
        description="Seconds a new connection attempt may take.",
    )
    max_waiting: int = Field(
        default=0,
        ge=0,
        validation_alias=_env("DB_MAX_WAITING", "max_waiting"),
        description="Requests that may wait for a connection at once (0 = unbounded).",
    )
    sqlite_busy_timeout_ms: int = Field(
        default=5000,
        ge=0,
        validation_alias=_env("DB_SQLITE_BUSY_TIMEOUT_MS", "sqlite_busy_timeout_ms"),
        description="How long SQLite waits for another process's write lock.",
    )
    leak_threshold_s: float = Field(
        default=0.0,
        ge=0,
        le=24 * 3600,
        validation_alias=_env("DB_LEAK_THRESHOLD_S", "leak_threshold_s"),
        description="Warn when a connection is held longer than this many seconds; 0 = off.",
    )
    pool_pre_ping_idle_s: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        validation_alias=_env("DB_POOL_PRE_PING_IDLE_S", "pool_pre_ping_idle_s"),
        description=(
            "With DB_POOL_PRE_PING, ping only connections idle longer than this (seconds; "
            "0 = every checkout). Connections the server closed are always replaced."
        ),
    )

    replica_url: SecretStr | None = Field(
        default=None,
        validation_alias=_env("DATABASE_REPLICA_URL", "replica_url"),
        description="A PostgreSQL read replica: read-only sessions use it; unset = none.",
    )
    replica_retry_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        validation_alias=_env("DB_REPLICA_RETRY_S", "replica_retry_s"),
        description="After the replica fails to connect, send reads to the primary this long.",
    )
    pgbouncer: bool = Field(
        default=False,
        validation_alias=_env("DB_PGBOUNCER", "pgbouncer"),
        description=(
            "PostgreSQL is reached through PgBouncer in transaction mode: no prepared "
            "statement cache, statement_timeout by SET LOCAL in each transaction."
        ),
    )

    @field_validator("url", "replica_url", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> SecretStr | None:
        if value is None or value == "":
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str | URL):
            raise ValueError("must be a string")
        if isinstance(raw, URL):
            raw = raw.render_as_string(hide_password=False)
        return SecretStr(normalise_url(raw).render_as_string(hide_password=False))

    @model_validator(mode="after")
    def _replica_needs_postgresql(self) -> DatabaseSettings:
        if self.replica_url is not None:
            replica = make_url(self.replica_url.get_secret_value())
            if self.backend != "postgresql" or not replica.drivername.startswith("postgresql"):
                # Raised as a ValueError on the field so the message names the variable.
                raise ValueError("DATABASE_REPLICA_URL: read replicas need PostgreSQL")
        return self

    def for_replica(self) -> DatabaseSettings:
        """The same pool settings, pointed at the replica (which has no replica itself)."""
        if self.replica_url is None:
            raise ValueError("no DATABASE_REPLICA_URL set")
        return self.model_copy(update={"url": self.replica_url, "replica_url": None})

    @classmethod
    def from_env(cls, **overrides: Any) -> DatabaseSettings:
        """Read the settings from the environment, with keyword *overrides* on top.

        Raises:
            SettingsError: a value is invalid; the message names the variable and never
                repeats the URL's password.
        """
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None

    # -- derived values -----------------------------------------------------------------

    @property
    def sqlalchemy_url(self) -> URL:
        """The async driver URL, password included: hand it to SQLAlchemy only."""
        return make_url(self.url.get_secret_value())

    @property
    def sync_url(self) -> URL:
        """The same database through the sync driver (psycopg 3 or sqlite3).

        On PostgreSQL the query is translated to libpq's options (``ssl`` becomes
        ``sslmode``, ``timeout`` ``connect_timeout``; asyncpg's cache and
        ``command_timeout`` options are dropped).
        """
        url = self.sqlalchemy_url
        sync = url.set(drivername=_SYNC_DRIVERS[url.drivername])
        if self.backend == "postgresql":
            sync = sync.set(query=libpq_query(url))
        return sync

    @property
    def redacted_url(self) -> str:
        """The URL with its password replaced by ``***``: safe to log and show."""
        return redact_url(self.sqlalchemy_url)

    @property
    def backend(self) -> Backend:
        """``"postgresql"`` or ``"sqlite"``."""
        return "sqlite" if self.sqlalchemy_url.drivername.startswith("sqlite") else "postgresql"

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (self.redacted_url if name == "url" else value)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        if not error["loc"]:  # a check across fields: its message names the variable
            problems.append(error["msg"].removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        env = _ENV_NAMES.get(field, field)
        if field in ("url", "DATABASE_URL") and error["type"] in ("missing", "secret_str_type"):
            problems.append(
                "DATABASE_URL is not set: set it (postgresql://user@host/db, "
                "sqlite:///./app.db) or pass the URL, Database(url=...)"
            )
            continue
        problems.append(f"{env}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid database settings: " + "; ".join(problems)
