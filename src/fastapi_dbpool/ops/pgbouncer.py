"""Identify PgBouncer through its admin console, once a pooler has been detected.

PgBouncer answers on the virtual database ``pgbouncer`` with ``SHOW`` commands, over the
simple query protocol only (asyncpg's extended protocol is refused there, hence psycopg
with client-side binding). Users listed in ``admin_users`` or ``stats_users`` may read
it; anyone else is refused with PgBouncer's own "not allowed", which still tells us who
answered. Only called when the connection handshake already showed a pooler: on a
plain PostgreSQL server the attempt would leave a "database does not exist" line in the
server's log for nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from typing import Any

from ..settings import DatabaseSettings
from .budget import PoolerFacts

__all__ = ["identify_pgbouncer"]

ADMIN_DATABASE = "pgbouncer"


async def identify_pgbouncer(settings: DatabaseSettings, pooler: PoolerFacts) -> PoolerFacts:
    """Return *pooler* completed with what PgBouncer's admin console tells.

    Never raises: an admin console that cannot be read leaves *pooler* as it was, with
    one more piece of evidence saying why.
    """
    import psycopg

    try:
        async with asyncio.timeout(settings.connect_timeout + 1):
            conn = await psycopg.AsyncConnection.connect(
                **_conninfo(settings), autocommit=True, cursor_factory=psycopg.AsyncClientCursor
            )
            async with conn:
                return await _read_console(conn, settings, pooler)
    except TimeoutError:
        note = "PgBouncer's admin console did not answer"
    except psycopg.Error as error:
        if "not allowed" in str(error):
            return dataclasses.replace(
                pooler,
                product="PgBouncer",
                evidence=(
                    *pooler.evidence,
                    "the admin database 'pgbouncer' answered PgBouncer's 'not allowed' (add"
                    " the user to stats_users to read pool_mode and limits)",
                ),
            )
        note = "no PgBouncer admin console at this address"
    return dataclasses.replace(pooler, evidence=(*pooler.evidence, note))


async def _read_console(conn: Any, settings: DatabaseSettings, pooler: PoolerFacts) -> PoolerFacts:
    version = (await (await conn.execute("SHOW VERSION")).fetchone())[0]
    config = {row[0]: row[1] for row in await (await conn.execute("SHOW CONFIG")).fetchall()}
    cursor = await conn.execute("SHOW DATABASES")
    columns = [column.name for column in cursor.description]
    databases = [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]
    # A database entry may override the global pool_mode; '*' is the fallback entry,
    # whose per-database rows appear once a client has used them.
    ours = next((d for d in databases if d.get("name") == settings.sqlalchemy_url.database), None)
    pool_mode = (ours or {}).get("pool_mode") or config.get("pool_mode")
    return dataclasses.replace(
        pooler,
        product="PgBouncer",
        evidence=(*pooler.evidence, "its admin console answered SHOW VERSION"),
        version=str(version).removeprefix("PgBouncer ").strip(),
        pool_mode=pool_mode,
        max_client_conn=_int(config.get("max_client_conn")),
        client_idle_timeout_s=_int(config.get("client_idle_timeout")),
        # PgBouncer 1.21+; older versions do not track prepared statements at all.
        max_prepared_statements=_int(config.get("max_prepared_statements", "0")),
    )


def _conninfo(settings: DatabaseSettings) -> dict[str, Any]:
    url = settings.sqlalchemy_url
    host = url.host or url.query.get("host")
    info: dict[str, Any] = {
        "host": host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": ADMIN_DATABASE,
        # libpq counts whole seconds and treats values below 2 as 2.
        "connect_timeout": max(2, math.ceil(settings.connect_timeout)),
        "application_name": "fastapi_dbpool:doctor",
    }
    ssl = url.query.get("ssl")
    if isinstance(ssl, str) and ssl in {"disable", "allow", "prefer", "require"}:
        info["sslmode"] = ssl
    return {k: v for k, v in info.items() if v is not None}


def _int(value: object) -> int | None:
    try:
        return None if value is None else int(str(value))
    except ValueError:
        return None
