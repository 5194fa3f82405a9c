"""Facts about the database server, read through a connection opened like the app's.

The connection uses the app's own connection arguments (driver, startup parameters,
``DB_CONNECT_TIMEOUT``) under the ``application_name`` ``fastapi_dbpool:<pool>:<purpose>``,
so that a setting the server or a pooler rejects shows up here first. Public names are
re-exported by :mod:`fastapi_dbpool.ops.budget`.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ..errors import ConnectFailed
from ..settings import DatabaseSettings
from ..sqlite.gate import READ_ONLY_OPTION, WriteGate, configure_sqlite

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["PoolerFacts", "ServerFacts", "inspect_server", "local_cpu_count"]

# Seconds the queries may take once connected; the connection itself is bounded by
# DB_CONNECT_TIMEOUT. They read catalog views and settings only.
QUERY_TIMEOUT = 5.0

_PG_SETTINGS = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",  # PostgreSQL 16+: slots for pg_use_reserved_connections
    "idle_session_timeout",  # ms, PostgreSQL 14+
    "idle_in_transaction_session_timeout",  # ms
    "statement_timeout",  # ms
    "tcp_keepalives_idle",  # s; 0 = the operating system's default
)

# One statement, so no transaction is needed (a check must never show up as "idle in
# transaction"), and behind PgBouncer in transaction mode every value, the pid included,
# comes from the same server backend.
_FACTS_QUERY = """
SELECT version() AS version,
       current_setting('server_version') AS server_version,
       pg_backend_pid() AS backend_pid,
       inet_server_port() AS server_port,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend') AS in_use,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND application_name = $1) AS of_app,
       (SELECT json_object_agg(name, setting) FROM pg_settings
         WHERE name = ANY($2::text[]))::text AS settings
"""

# Linux servers only, and only for roles allowed to read server files (superusers,
# pg_read_server_files); anywhere else it fails and the cores are taken from elsewhere.
_CORES_QUERY = (
    r"SELECT count(*) FROM regexp_matches(pg_read_file('/proc/cpuinfo'), '^processor\s*:', 'gn')"
)

_ASYNCPG_CONNECT_PARAMS: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class PoolerFacts:
    """A connection pooler found between the app and PostgreSQL.

    Attributes:
        product: ``"PgBouncer"`` when identified, else ``"unidentified pooler"``.
        evidence: How it was found, one phrase per clue.
        version: PgBouncer's version, when its admin console answered.
        pool_mode: ``session``, ``transaction`` or ``statement``, when readable.
        max_client_conn: PgBouncer's limit on client connections, when readable.
        client_idle_timeout_s: PgBouncer closes idle client connections after this (0 = never).
        max_prepared_statements: PgBouncer 1.21+ tracks this many prepared statements.
    """

    product: str
    evidence: tuple[str, ...]
    version: str | None = None
    pool_mode: str | None = None
    max_client_conn: int | None = None
    client_idle_timeout_s: int | None = None
    max_prepared_statements: int | None = None


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the database reports about itself; None where it does not apply or is unknown.

    Durations are in seconds, 0 meaning "off" as in PostgreSQL's own settings.
    """

    backend: str
    product: str
    version: str
    max_connections: int | None = None
    superuser_reserved_connections: int | None = None
    reserved_connections: int | None = None
    connections_in_use: int | None = None
    connections_of_app: int | None = None
    idle_session_timeout_s: float | None = None
    idle_in_transaction_session_timeout_s: float | None = None
    statement_timeout_ms: int | None = None
    tcp_keepalives_idle_s: int | None = None
    db_cores: int | None = None
    db_cores_source: str | None = None
    pooler: PoolerFacts | None = None
    server_pid_differs: bool = False
    server_port: int | None = None
    sqlite_path: str | None = None
    sqlite_exists: bool | None = None
    journal_mode: str | None = None
    busy_timeout_ms: int | None = None
    foreign_keys: bool | None = None
    synchronous: str | None = None

    @property
    def connections_in_use_by_others(self) -> int | None:
        """Client connections that are neither this check's nor the app's own pools'."""
        if self.connections_in_use is None:
            return None
        own = (self.connections_of_app or 0) + 1  # + 1: the connection reading the facts
        return max(0, self.connections_in_use - own)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; ``pooler`` is None or a dict."""
        return asdict(self)


def local_cpu_count() -> int:
    """CPUs this process may run on (respects affinity, e.g. ``taskset``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


async def inspect_server(database: Database, *, purpose: str = "check") -> ServerFacts:
    """Read the facts of *database*'s server through a connection of its own.

    The connection is opened with the app's connection arguments and the
    ``application_name`` ``fastapi_dbpool:<pool>:<purpose>``, and closed before returning.

    Raises:
        ConnectFailed: the server cannot be reached within DB_CONNECT_TIMEOUT or refused
            the connection; the message never contains the URL's password.
    """
    if database.settings.backend == "sqlite":
        return await _inspect_sqlite(database)
    return await _inspect_postgres(database, f"fastapi_dbpool:{database.name}:{purpose}")


# -- PostgreSQL -----------------------------------------------------------------------------


async def _inspect_postgres(database: Database, application_name: str) -> ServerFacts:
    import asyncpg

    settings = database.settings
    params = asyncpg_connect_params(settings.sqlalchemy_url, database._connect_args())
    params["server_settings"] = {
        **params.get("server_settings", {}),
        "application_name": application_name,
    }
    try:
        conn = await asyncpg.connect(**params)
    except TimeoutError:
        raise ConnectFailed(
            f"no answer from {settings.redacted_url} within {settings.connect_timeout:g} s"
            " (DB_CONNECT_TIMEOUT)"
        ) from None
    except Exception as error:  # refused, DNS, TLS, authentication, a bad URL option...
        raise ConnectFailed(
            f"cannot connect to {settings.redacted_url}: {describe_error(error, settings)}"
        ) from None
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            return await _read_postgres_facts(conn, database)
    except TimeoutError:
        raise ConnectFailed(
            f"{settings.redacted_url} accepted the connection but did not answer within"
            f" {QUERY_TIMEOUT:g} s"
        ) from None
    except Exception as error:
        raise ConnectFailed(
            f"could not read the facts of {settings.redacted_url}:"
            f" {describe_error(error, settings)}"
        ) from None
    finally:
        # terminate() is synchronous: a cancelled caller cannot leave the socket open.
        conn.terminate()


async def _read_postgres_facts(conn: Any, database: Database) -> ServerFacts:
    row = await conn.fetchrow(_FACTS_QUERY, f"fastapi_dbpool:{database.name}", list(_PG_SETTINGS))
    values: dict[str, str] = json.loads(row["settings"] or "{}")
    cores = await _server_cores(conn)
    # The pid in the startup handshake (BackendKeyData) is the server's own, unless a
    # pooler answered the handshake: PgBouncer sends a random key of its own there.
    pid_differs = conn.get_server_pid() != row["backend_pid"]
    db_cores, cores_source = _cores(cores, database.settings.sqlalchemy_url)
    return ServerFacts(
        backend="postgresql",
        product=str(row["version"]).split(" ", 1)[0],
        version=str(row["server_version"]),
        max_connections=_int(values.get("max_connections")),
        superuser_reserved_connections=_int(values.get("superuser_reserved_connections")),
        reserved_connections=_int(values.get("reserved_connections")),
        connections_in_use=int(row["in_use"]),
        connections_of_app=int(row["of_app"]),
        idle_session_timeout_s=_ms_to_s(values.get("idle_session_timeout")),
        idle_in_transaction_session_timeout_s=_ms_to_s(
            values.get("idle_in_transaction_session_timeout")
        ),
        statement_timeout_ms=_int(values.get("statement_timeout")),
        tcp_keepalives_idle_s=_int(values.get("tcp_keepalives_idle")),
        db_cores=db_cores,
        db_cores_source=cores_source,
        server_pid_differs=pid_differs,
        server_port=row["server_port"],
        pooler=_pooler_clues(pid_differs, row["server_port"], database.settings.sqlalchemy_url),
    )


def _pooler_clues(pid_differs: bool, server_port: int | None, url: URL) -> PoolerFacts | None:
    # A port that differs alone proves nothing (Docker maps ports); with the pid it
    # confirms that something answers in the server's place.
    if not pid_differs:
        return None
    evidence = ["the server's backend pid differs from the one in the connection handshake"]
    if server_port is not None and url.port is not None and server_port != url.port:
        evidence.append(f"the server listens on port {server_port}, the URL names {url.port}")
    return PoolerFacts("unidentified pooler", tuple(evidence))


async def _server_cores(conn: Any) -> int | None:
    import asyncpg

    try:
        count = await conn.fetchval(_CORES_QUERY)
    except asyncpg.PostgresError:  # not allowed to read server files, or not Linux
        return None
    return int(count) or None


def _cores(server_cores: int | None, url: URL) -> tuple[int | None, str | None]:
    if server_cores:
        return server_cores, "read from the server's /proc/cpuinfo"
    if is_local_host(url):
        return local_cpu_count(), "the database runs on this machine"
    return None, None


def is_local_host(url: URL) -> bool:
    """True when *url* names this machine: a loopback address or a Unix socket."""
    host = url.host or url.query.get("host")
    if not host or (isinstance(host, str) and host.startswith("/")) or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def asyncpg_connect_params(url: URL, connect_args: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``asyncpg.connect`` equivalent to the engine's for *url*.

    SQLAlchemy's dialect translates the URL (host, port, ``ssl``, Unix sockets); options
    only SQLAlchemy understands are left out. Prepared statements are not cached, so
    that PgBouncer in transaction mode cannot hand us a backend where a statement of
    the same name exists.
    """
    global _ASYNCPG_CONNECT_PARAMS
    if _ASYNCPG_CONNECT_PARAMS is None:
        import asyncpg

        _ASYNCPG_CONNECT_PARAMS = frozenset(inspect.signature(asyncpg.connect).parameters)
    _, params = PGDialect_asyncpg().create_connect_args(url)  # type: ignore[no-untyped-call]
    merged = {**params, **connect_args, "statement_cache_size": 0}
    return {k: v for k, v in merged.items() if k in _ASYNCPG_CONNECT_PARAMS}


def describe_error(error: BaseException, settings: DatabaseSettings) -> str:
    """``Type: message`` for *error*, with the URL's password blanked if it appears."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    password = settings.sqlalchemy_url.password
    if password:
        message = message.replace(str(password), "***")
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _ms_to_s(value: object) -> float | None:
    return None if value is None else int(str(value)) / 1000


# -- SQLite ---------------------------------------------------------------------------------


async def _inspect_sqlite(database: Database) -> ServerFacts:
    import sqlite3

    settings = database.settings
    url = settings.sqlalchemy_url
    path = Path(str(url.database))
    exists = await asyncio.to_thread(path.exists)
    common: dict[str, Any] = {
        "backend": "sqlite",
        "product": "SQLite",
        "version": sqlite3.sqlite_version,
        "db_cores": local_cpu_count(),
        "db_cores_source": "SQLite runs in this process",
        "sqlite_path": str(path),
        "sqlite_exists": exists,
    }
    if not exists:
        return ServerFacts(**common)  # connecting would create an empty database
    # The same connection setup as the app's (pragmas on connect), read-only so that the
    # check never takes SQLite's write lock.
    engine = create_async_engine(url, poolclass=NullPool, connect_args=database._connect_args())
    configure_sqlite(engine.sync_engine, WriteGate(0.1), settings.sqlite_busy_timeout_ms)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{READ_ONLY_OPTION: True})
            pragmas: dict[str, Any] = {}
            for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous"):
                pragmas[name] = (await conn.execute(text(f"PRAGMA {name}"))).scalar()
    except Exception as error:
        raise ConnectFailed(
            f"cannot open {settings.redacted_url}: {describe_error(error, settings)}"
        ) from None
    finally:
        await engine.dispose()
    return ServerFacts(
        **common,
        journal_mode=str(pragmas["journal_mode"]).lower(),
        busy_timeout_ms=int(pragmas["busy_timeout"]),
        foreign_keys=bool(pragmas["foreign_keys"]),
        synchronous={0: "off", 1: "normal", 2: "full", 3: "extra"}.get(
            int(pragmas["synchronous"]), str(pragmas["synchronous"])
        ),
    )
