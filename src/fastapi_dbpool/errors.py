"""Errors raised by fastapi_dbpool.

Every error the library raises derives from :class:`DBPoolError`, so one ``except``
clause catches them all::

    DBPoolError
    ├── SettingsError           a DB_* variable or DATABASE_URL is invalid (raised at start)
    ├── DatabaseNotStarted      the engine is used outside the app's lifespan
    ├── WriteInReadSession      a write was attempted in a read-only session
    ├── TransactionOpen         execute_committed() inside a transaction it would commit
    ├── DirectConnectionMisuse  a statement a direct connection cannot run as written
    └── DatabaseUnavailable     the request cannot be served now; answered 503
        ├── PoolTimeout         no connection became free within DB_POOL_TIMEOUT
        │   └── TooManyWaiting  DB_MAX_WAITING requests already wait; shed at once
        ├── ConnectFailed       the server cannot be reached or refused the connection
        └── StatementTimeout    the server cancelled a statement after DB_STATEMENT_TIMEOUT_MS

The HTTP answer to each error is decided in one place, :mod:`fastapi_dbpool.responses`.
"""

from __future__ import annotations


class DBPoolError(Exception):
    """Root of every error raised by fastapi_dbpool."""


class SettingsError(DBPoolError, ValueError):
    """A setting read from the environment is invalid; the message names the variable."""


class DatabaseNotStarted(DBPoolError, RuntimeError):
    """The database was used before the app's lifespan started it, or after it stopped."""


class WriteInReadSession(DBPoolError):
    """A statement that writes was sent through a read-only session."""


class TransactionOpen(DBPoolError, RuntimeError):
    """``execute_committed()`` was called while the connection had a transaction open."""


class DatabaseUnavailable(DBPoolError):
    """The database cannot serve this request now; a retry later may succeed.

    Attributes:
        retry_after: Seconds a client should wait before retrying, sent as ``Retry-After``.
    """

    retry_after: int = 1

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class PoolTimeout(DatabaseUnavailable):
    """No pooled connection became free within the caller's timeout."""


class TooManyWaiting(PoolTimeout):
    """The number of requests already waiting for a connection reached DB_MAX_WAITING."""


class ConnectFailed(DatabaseUnavailable):
    """A new connection to the server could not be opened."""

    retry_after = 5


class StatementTimeout(DatabaseUnavailable):
    """The server cancelled a statement that ran longer than DB_STATEMENT_TIMEOUT_MS."""


class DirectConnectionMisuse(DBPoolError, TypeError):
    """A statement a direct connection cannot run as written; the message says what to write."""


class InheritedAcrossFork(DatabaseNotStarted):
    """The database was started in a parent process and is used in a forked child.

    Pooled connections are sockets: shared by two processes, their bytes interleave.
    Each worker must start its own engine after the fork (``Database.install(app)``
    does, in the app's lifespan).
    """
