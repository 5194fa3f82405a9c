"""Pessimistic disconnect detection that costs a round trip only when it can pay off.

SQLAlchemy's ``pool_pre_ping`` tests every connection as it leaves the pool. With
asyncpg that ping is ``BEGIN``, ``;``, ``ROLLBACK``: three round trips before every
request's first statement, more than the request itself. This is the custom
pessimistic ping of SQLAlchemy's pooling guide, made cheaper:

* a connection the server closed (restart, ``pg_terminate_backend``, idle timeout
  with a FIN) is already known closed to the driver: refused at no cost;
* a connection returned to the pool less than ``DB_POOL_PRE_PING_IDLE_S`` seconds ago
  was working then and is not pinged;
* any other one is pinged, and a failed ping makes the pool replace it
  (``DisconnectionError`` raised from the checkout event, as the guide shows).

A connection that dies silently within the idle window fails its first statement;
:class:`~fastapi_dbpool.DirectConnection` then retries that statement once on a fresh
connection, and a session's request is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.pool import ConnectionPoolEntry, Pool

__all__ = ["install_idle_ping"]

_LAST_RETURNED = "fastapi_dbpool.last_returned"


def install_idle_ping(pool: Pool, idle_seconds: float, ping: Callable[[Any], object]) -> None:
    """Ping connections of *pool* idle longer than *idle_seconds* (0: on every checkout).

    Args:
        pool: The async pool (asyncpg) or the sync pool (psycopg).
        idle_seconds: ``DB_POOL_PRE_PING_IDLE_S``.
        ping: The dialect's ping (``dialect.do_ping``); raises when the connection is dead.
    """

    @event.listens_for(pool, "connect")
    def _connected(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_RETURNED] = time.monotonic()

    @event.listens_for(pool, "checkin")
    def _returned(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_RETURNED] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _check(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        if _known_closed(dbapi_connection):
            raise exc.DisconnectionError("the server closed this connection")
        returned = record.info.get(_LAST_RETURNED)
        if returned is not None and time.monotonic() - returned < idle_seconds:
            return
        try:
            ping(dbapi_connection)
        except Exception as error:
            raise exc.DisconnectionError("the connection did not answer a ping") from error


def _known_closed(dbapi_connection: Any) -> bool:
    """True when the driver already knows the server closed the connection (no round trip)."""
    driver = getattr(dbapi_connection, "_connection", None)  # asyncpg behind SQLAlchemy
    is_closed = getattr(driver, "is_closed", None)
    if callable(is_closed):
        return bool(is_closed())
    return bool(getattr(dbapi_connection, "closed", False))  # psycopg 3
