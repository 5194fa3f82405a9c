"""The HTTP answer to each database error, decided in one place.

==========================================  ======  ================================
error                                       status  why
==========================================  ======  ================================
PoolTimeout, TooManyWaiting                 503     busy: retry after ``Retry-After``
ConnectFailed, connection lost mid-request  503     down: retry later
StatementTimeout, server-cancelled query    503     the query ran past its deadline
SQLite ``database is locked``               503     another process held the lock
IntegrityError not handled by the app       409     the data conflicts with a row
DataError (value the column cannot take)    422     the client sent it
==========================================  ======  ================================

Bodies are JSON ``{"detail": ..., "reason": ...}``; they never contain the driver's
message, which can name hosts, users or values. The full error is logged instead.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import DatabaseUnavailable, PoolTimeout, StatementTimeout

__all__ = ["classify", "install_error_handlers"]

logger = logging.getLogger("fastapi_dbpool")

# SQLSTATE 57014: query_canceled (statement_timeout, or pg_cancel_backend).
_QUERY_CANCELED = "57014"


def classify(error: BaseException) -> tuple[int, str, str] | None:
    """Map a database error to ``(status, reason, detail)``, or None if it is a bug.

    *reason* is a short machine-readable token; *detail* a sentence for people.
    """
    if isinstance(error, PoolTimeout):
        return 503, "pool_exhausted", "The database is busy; retry shortly."
    if isinstance(error, StatementTimeout) or _is_query_canceled(error):
        return 503, "statement_timeout", "The database took too long to answer; retry shortly."
    if isinstance(error, DatabaseUnavailable):
        return 503, "database_unavailable", "The database is unavailable; retry shortly."
    if isinstance(error, sa_exc.TimeoutError):
        return 503, "pool_exhausted", "The database is busy; retry shortly."
    if isinstance(error, sa_exc.IntegrityError):
        return 409, "conflict", "The request conflicts with existing data."
    if isinstance(error, sa_exc.DataError):
        return 422, "invalid_value", "A value was not accepted by the database."
    if isinstance(error, sa_exc.DBAPIError) and (
        error.connection_invalidated
        or isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return 503, "database_unavailable", "The database is unavailable; retry shortly."
    return None


def _is_query_canceled(error: BaseException) -> bool:
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    orig = error.orig
    if getattr(orig, "sqlstate", None) == _QUERY_CANCELED:
        return True
    # SQLite's answer to an interrupt() from the statement deadline.
    return "interrupted" in str(orig) and "sqlite" in type(orig).__module__


def _retry_after(error: BaseException) -> int:
    return error.retry_after if isinstance(error, DatabaseUnavailable) else 1


async def _handle(request: Request, error: Exception) -> JSONResponse:
    mapped = classify(error)
    if mapped is None:
        raise error  # not ours to answer: the server's default 500 and traceback
    status, reason, detail = mapped
    logger.warning(
        "%s %s answered %d: %s",
        request.method,
        request.url.path,
        status,
        _describe(error),
        extra={"event": "db_error", "reason": reason, "status": status},
    )
    headers = {"Retry-After": str(_retry_after(error))} if status == 503 else None
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status, headers=headers)


def _describe(error: BaseException) -> str:
    # Our own errors carry safe, actionable messages; a driver's may carry secrets.
    if _is_query_canceled(error):
        return (
            "statement cancelled: it ran past DB_STATEMENT_TIMEOUT_MS (or was cancelled "
            "by an administrator); make it faster or raise the timeout"
        )
    if isinstance(error, DatabaseUnavailable | sa_exc.TimeoutError) and not isinstance(
        error, sa_exc.DBAPIError
    ):
        return str(error)
    orig = getattr(error, "orig", None)
    return type(orig if orig is not None else error).__name__


async def _validation_error(request: Request, error: Exception) -> Response:
    # FastAPI's own handler echoes the input back and encodes it as UTF-8, which
    # fails (a 500) on a lone surrogate such as "\ud800" in the body. Escaping
    # non-ASCII characters gives the same JSON for every valid input, and a 422
    # for that one.
    assert isinstance(error, RequestValidationError)
    body = json.dumps({"detail": jsonable_encoder(error.errors())}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def install_error_handlers(app: Any) -> None:
    """Register the handlers on *app* (done by :meth:`Database.install`)."""
    for error_type in (DatabaseUnavailable, sa_exc.TimeoutError, sa_exc.DBAPIError):
        app.add_exception_handler(error_type, _handle)
    app.add_exception_handler(RequestValidationError, _validation_error)
