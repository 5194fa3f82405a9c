"""PostgreSQL connection options: application name, statement deadline, PgBouncer.

``DB_STATEMENT_TIMEOUT_MS`` becomes the server's ``statement_timeout``: the server
cancels a statement that runs longer (SQLSTATE 57014), the transaction is rolled
back, and the connection stays usable. responses.py answers 503 ``statement_timeout``.

How it is set depends on what sits between us and the server:

* directly, it is a startup parameter of each connection (``server_settings``): no
  extra round trip;
* behind PgBouncer in transaction mode (``DB_PGBOUNCER=true``), startup parameters
  other than a few are refused, and a ``SET`` would stay on whichever server
  connection ran it. So it is ``SET LOCAL`` at the start of each transaction: it
  lasts exactly that transaction, on the server connection that runs it.

Behind PgBouncer, prepared statements are a trap as well: asyncpg names them
``__asyncpg_stmt_1__``, ``_2__``… per client connection and caches them, and two
clients' statements meet on the same server connection ("prepared statement
already exists"), or a cached one is missing from the next ("does not exist").
``DB_PGBOUNCER`` turns off both caches (asyncpg's and SQLAlchemy's) and gives each
statement a unique name.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from ..settings import DatabaseSettings, asyncpg_numbers
from .no_answer import command_timeout

__all__ = ["connect_args", "install_statement_timeout", "local_statement_timeout"]


def _unique_statement_name() -> str:
    return f"__fastapi_dbpool_{uuid.uuid4().hex}__"


def connect_args(settings: DatabaseSettings, application_name: str) -> dict[str, Any]:
    """Asyncpg's ``connect()`` arguments for *settings*.

    The URL's numeric options (``command_timeout=30``) come as numbers: SQLAlchemy
    hands asyncpg the query's text, which it cannot compare. The settings' own values
    win over the URL's (``timeout`` is ``DB_CONNECT_TIMEOUT``).
    """
    server_settings = {"application_name": application_name}
    args: dict[str, Any] = asyncpg_numbers(settings.sqlalchemy_url)
    args |= {"timeout": settings.connect_timeout, "server_settings": server_settings}
    if settings.pgbouncer:
        args |= {
            "statement_cache_size": 0,  # asyncpg's own cache
            "prepared_statement_cache_size": 0,  # SQLAlchemy's asyncpg adapter cache
            "prepared_statement_name_func": _unique_statement_name,
        }
    elif settings.statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
    deadline = command_timeout(settings)
    if deadline is not None:
        args["command_timeout"] = deadline  # when no answer comes at all (_no_answer.py)
    return args


def local_statement_timeout(settings: DatabaseSettings) -> str | None:
    """The ``SET LOCAL`` each transaction must run, or None when the connection has it."""
    if not (settings.pgbouncer and settings.statement_timeout_ms):
        return None
    return f"SET LOCAL statement_timeout = {int(settings.statement_timeout_ms)}"


def install_statement_timeout(engine: Engine, settings: DatabaseSettings) -> None:
    """Behind PgBouncer, ``SET LOCAL statement_timeout`` as each transaction begins."""
    statement = local_statement_timeout(settings)
    if statement is None:
        return

    @event.listens_for(engine, "begin")
    def _set_timeout(conn: Connection) -> None:
        conn.exec_driver_sql(statement)
