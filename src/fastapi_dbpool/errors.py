"""Errors raised by fastapi_dbpool, and the taxonomy of every database failure.

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

The driver's own errors (SQLAlchemy's ``DBAPIError`` family, ``StaleDataError``) are not
wrapped: :func:`classify` sorts any of them, on either database and from any path (ORM
sessions, direct connections, sync sessions, background work), into one
:class:`Failure` of the table below. The table decides the HTTP answer
(:mod:`fastapi_dbpool.responses` renders it) and whether ``Database.transaction()``
re-runs the unit; docs/errors.md shows it with examples.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError

from ._compat import driver_exception

__all__ = [
    "Conflict",
    "ConnectFailed",
    "DBPoolError",
    "DatabaseNotStarted",
    "DatabaseUnavailable",
    "DirectConnectionMisuse",
    "ErrorBody",
    "Failure",
    "PoolTimeout",
    "SettingsError",
    "StatementTimeout",
    "TooManyWaiting",
    "TransactionOpen",
    "WriteInReadSession",
    "classify",
    "conflict_of",
    "error_responses",
    "is_retryable",
]


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


# -- the taxonomy ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Failure:
    """One class of database failure and how it is answered.

    Attributes:
        code: Machine-readable name of the failure, sent as ``code`` in the body (the
            PostgreSQL condition name where there is one: ``serialization_failure``).
        reason: The family it belongs to, sent as ``reason`` (kept from the first
            versions of the body): ``conflict``, ``row_changed``, ``transient``,
            ``database_unavailable``, ``statement_timeout``, ``pool_exhausted``,
            ``invalid_value``.
        status: The HTTP status of the answer.
        detail: A sentence for people; never the driver's text.
        retryable: ``Database.transaction(retries=...)`` re-runs the unit of work.
        retry_after: Seconds sent as ``Retry-After`` with a 503 (None for other statuses).
    """

    code: str
    reason: str
    status: int
    detail: str
    retryable: bool = False
    retry_after: int | None = None


def _conflict(code: str, what: str) -> Failure:
    return Failure(code, "conflict", 409, f"The request conflicts with existing data ({what}).")


def _transient(code: str, detail: str, *, retryable: bool = False) -> Failure:
    return Failure(code, "transient", 503, detail, retryable=retryable, retry_after=1)


def _unavailable(code: str, detail: str, retry_after: int = 1) -> Failure:
    return Failure(code, "database_unavailable", 503, detail, retry_after=retry_after)


_BUSY = "The database is busy; retry shortly."
_DOWN = "The database is unavailable; retry shortly."
_RACE = "The request lost a race with another transaction; retry it."

POOL_EXHAUSTED = Failure("pool_exhausted", "pool_exhausted", 503, _BUSY, retry_after=1)
TOO_MANY_WAITING = Failure("too_many_waiting", "pool_exhausted", 503, _BUSY, retry_after=1)
STATEMENT_TIMEOUT = Failure(
    "statement_timeout",
    "statement_timeout",
    503,
    "The database took too long to answer; retry shortly.",
    retry_after=1,
)
CONNECT_FAILED = _unavailable("connect_failed", _DOWN, retry_after=5)
DATABASE_UNAVAILABLE = _unavailable("database_unavailable", _DOWN)
CONNECTION_LOST = _unavailable("connection_lost", _DOWN)
ROW_CHANGED = Failure(
    "row_changed",
    "row_changed",
    409,
    "The row was changed or deleted by another request meanwhile; read it again.",
)
INTEGRITY = _conflict("integrity_error", "a constraint failed")
INVALID_VALUE = Failure(
    "invalid_value", "invalid_value", 422, "A value was not accepted by the database."
)
SQLITE_BUSY = _transient("sqlite_busy", "Another process held the database's write lock; retry.")

# PostgreSQL SQLSTATEs, exact codes first (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_BY_SQLSTATE: dict[str, Failure] = {
    "23502": _conflict("not_null_violation", "a required value is missing"),
    "23503": _conflict("foreign_key_violation", "a referenced row does not exist or is still used"),
    "23505": _conflict("unique_violation", "a unique value is already taken"),
    "23514": _conflict("check_violation", "a check constraint failed"),
    "23P01": _conflict("exclusion_violation", "an exclusion constraint failed"),
    "23001": _conflict("restrict_violation", "the row is still referenced"),
    # RAISE EXCEPTION in a trigger or function without its own SQLSTATE: a rule the
    # database enforces refused the change.
    "P0001": Failure(
        "raise_exception", "conflict", 409, "The database refused the change (a rule failed)."
    ),
    "40001": _transient("serialization_failure", _RACE, retryable=True),
    "40P01": _transient("deadlock_detected", _RACE, retryable=True),
    "55P03": _transient("lock_not_available", "A row it needs is locked; retry shortly."),
    "57014": STATEMENT_TIMEOUT,  # query_canceled: statement_timeout or pg_cancel_backend
    "57P01": _unavailable("admin_shutdown", _DOWN),
    "57P02": _unavailable("crash_shutdown", _DOWN),
    "57P03": _unavailable("cannot_connect_now", _DOWN, retry_after=5),
}
# Then whole classes, by the SQLSTATE's first two characters.
_BY_SQLSTATE_CLASS: dict[str, Failure] = {
    "08": CONNECTION_LOST,  # connection_exception
    "22": INVALID_VALUE,  # data_exception
    "23": INTEGRITY,  # integrity_constraint_violation
    "40": _transient("transaction_rollback", _RACE),
    "53": _unavailable("insufficient_resources", _DOWN, retry_after=5),  # disk, memory, slots
}
# SQLite primary result codes (https://sqlite.org/rescode.html); the extended codes
# carry the primary one in their low byte.
_BY_SQLITE_CODE: dict[int, Failure] = {
    5: SQLITE_BUSY,  # SQLITE_BUSY: another connection holds the lock past busy_timeout
    6: SQLITE_BUSY,  # SQLITE_LOCKED
    9: STATEMENT_TIMEOUT,  # SQLITE_INTERRUPT: the statement deadline interrupted it
    13: _unavailable("insufficient_resources", _DOWN, retry_after=5),  # SQLITE_FULL
    7: _unavailable("insufficient_resources", _DOWN, retry_after=5),  # SQLITE_NOMEM
    10: _unavailable("io_error", _DOWN, retry_after=5),  # SQLITE_IOERR
}
_SQLITE_CONSTRAINTS = {
    "UNIQUE": "unique_violation",
    "FOREIGN KEY": "foreign_key_violation",
    "CHECK": "check_violation",
    "NOT NULL": "not_null_violation",
    "PRIMARY KEY": "unique_violation",
}


def classify(error: BaseException) -> Failure | None:
    """Sort *error* into its class of the taxonomy, or None if it is not a database failure.

    None means a bug (a syntax error, a missing table, a write in a read-only
    transaction): the caller lets it through, and the server answers 500.
    """
    if isinstance(error, TooManyWaiting):
        return TOO_MANY_WAITING
    if isinstance(error, PoolTimeout | sa_exc.TimeoutError):
        return POOL_EXHAUSTED
    if isinstance(error, StatementTimeout):
        return STATEMENT_TIMEOUT
    if isinstance(error, ConnectFailed):
        return CONNECT_FAILED
    if isinstance(error, DatabaseUnavailable):
        return DATABASE_UNAVAILABLE
    if isinstance(error, StaleDataError):
        return ROW_CHANGED
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    orig = error.orig
    sqlstate = _sqlstate(orig)
    if sqlstate is not None:
        found = _BY_SQLSTATE.get(sqlstate) or _BY_SQLSTATE_CLASS.get(sqlstate[:2])
        if found is not None:
            return found
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        found = _BY_SQLITE_CODE.get(sqlite_code & 0xFF)
        if found is not None:
            return found
    if isinstance(error, sa_exc.IntegrityError):
        conflict = conflict_of(error)
        return _SQLITE_FAILURES.get(conflict.code, INTEGRITY) if conflict else INTEGRITY
    if isinstance(error, sa_exc.DataError):
        return INVALID_VALUE
    if error.connection_invalidated:  # the dialect recognised a disconnect
        return CONNECTION_LOST
    if isinstance(orig, sqlite3.Error):
        # SQLite gives every failure a result code, and one the table above does not
        # list is no lost connection: SQLITE_ERROR (1) is a missing table, an unknown
        # column or a syntax error, i.e. a bug (500), as on PostgreSQL. Only the
        # driver's own "connection closed" errors come without a code.
        return CONNECTION_LOST if _sqlite_connection_gone(orig) else None
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return CONNECTION_LOST  # PostgreSQL without a SQLSTATE: the socket went away
    return None


# What sqlite3 and aiosqlite say, without a result code, when the connection is gone.
_SQLITE_GONE = ("no active connection", "connection closed", "closed database")


def _sqlite_connection_gone(orig: sqlite3.Error) -> bool:
    if getattr(orig, "sqlite_errorcode", None) is not None:
        return False
    message = str(orig).lower()
    return any(marker in message for marker in _SQLITE_GONE)


_SQLITE_FAILURES = {
    failure.code: failure
    for failure in _BY_SQLSTATE.values()
    if failure.code in _SQLITE_CONSTRAINTS.values()
}


def is_retryable(error: BaseException) -> bool:
    """True when re-running the whole transaction may succeed: serialization failure, deadlock."""
    failure = classify(error)
    return failure is not None and failure.retryable


def _sqlstate(orig: Any) -> str | None:
    # psycopg and SQLAlchemy's asyncpg adapter both expose .sqlstate; asyncpg's own
    # exception (a direct connection's, before translation) does too.
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) and len(sqlstate) == 5 else None


@dataclass(frozen=True, slots=True)
class Conflict:
    """What an integrity error says about the constraint that failed.

    Attributes:
        code: ``unique_violation``, ``foreign_key_violation``, ``check_violation``,
            ``not_null_violation``, ``exclusion_violation`` or ``integrity_error``.
        constraint: The constraint's name, when the database reports it (PostgreSQL
            always; SQLite for named CHECK constraints).
        table: The table, when reported.
        columns: The columns, when reported (SQLite names them instead of the constraint).
    """

    code: str
    constraint: str | None = None
    table: str | None = None
    columns: tuple[str, ...] = ()

    def on(self, constraint: Any) -> bool:
        """True when this conflict is on *constraint*, a SQLAlchemy ``Constraint``.

        Compares by name where the database gave one, else by table and columns
        (SQLite reports ``UNIQUE constraint failed: users.email``, without the name).
        """
        name = getattr(constraint, "name", None)
        if self.constraint is not None:
            return bool(name) and self.constraint == name
        table = getattr(getattr(constraint, "table", None), "name", None)
        columns = tuple(column.name for column in getattr(constraint, "columns", ()))
        return bool(self.columns) and self.table == table and self.columns == columns


def conflict_of(error: BaseException) -> Conflict | None:
    """Describe the constraint an integrity error is about; None for other errors.

    Use it to turn the service's own constraints into messages of its own::

        except IntegrityError as error:
            conflict = conflict_of(error)
            if conflict is not None and conflict.on(EMAIL_UNIQUE):
                raise HTTPException(409, "a user with this email already exists") from None
            raise  # any other constraint: the library's 409, naming it
    """
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    orig = error.orig
    sqlstate = _sqlstate(orig)
    if sqlstate is not None:
        failure = _BY_SQLSTATE.get(sqlstate)
        if not sqlstate.startswith("23"):
            return None
        diag = getattr(orig, "diag", None)  # psycopg
        source = diag if diag is not None else driver_exception(orig) if orig else None
        column = getattr(source, "column_name", None)
        return Conflict(
            code=failure.code if failure is not None else INTEGRITY.code,
            constraint=getattr(source, "constraint_name", None),
            table=getattr(source, "table_name", None),
            columns=(column,) if column else (),
        )
    if not isinstance(error, sa_exc.IntegrityError):
        return None
    return _sqlite_conflict(str(orig))


def _sqlite_conflict(message: str) -> Conflict:
    # "UNIQUE constraint failed: users.email", "CHECK constraint failed: ck_items_status",
    # "FOREIGN KEY constraint failed", "NOT NULL constraint failed: users.name".
    kind, _, target = message.partition(" constraint failed")
    code = _SQLITE_CONSTRAINTS.get(kind.strip(), INTEGRITY.code)
    target = target.removeprefix(":").strip()
    if not target:
        return Conflict(code)
    if code == "check_violation":
        return Conflict(code, constraint=target)
    qualified = [part.strip() for part in target.split(",")]
    tables = {part.partition(".")[0] for part in qualified}
    columns = tuple(part.partition(".")[2] for part in qualified)
    return Conflict(code, table=tables.pop() if len(tables) == 1 else None, columns=columns)


# -- the answer's shape, for OpenAPI ------------------------------------------------------


class ErrorBody(BaseModel):
    """The body of every error answer."""

    detail: str | list[dict[str, Any]] = Field(
        description="For people: a sentence, or the list of validation errors (422)."
    )
    code: str = Field(
        description="Machine-readable: the failure's name (docs/errors.md), e.g. "
        "unique_violation, serialization_failure, not_found."
    )
    reason: str | None = Field(
        default=None,
        description="The failure's family for database errors: conflict, row_changed, "
        "transient, database_unavailable, statement_timeout, pool_exhausted, invalid_value.",
    )


_DESCRIPTIONS = {
    400: "The body is not JSON",
    404: "Not found",
    409: "Conflicts with existing data, or the row changed meanwhile",
    413: "Request body too large",
    422: "Validation error",
    503: "The database is busy or unavailable; retry after Retry-After",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for a route that may answer *statuses*, with :class:`ErrorBody`.

    A 503 also declares its ``Retry-After`` header::

        @router.get("/{id}", responses=error_responses(404, 503))
    """
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": ErrorBody,
            "description": _DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
        }
        if status == 503:
            entry["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer"},
                }
            }
        declared[status] = entry
    return declared
