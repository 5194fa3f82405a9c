"""The HTTP answer to each error, rendered from the taxonomy in :mod:`fastapi_dbpool.errors`.

==================================================  ======  ===========================
failure (``code``)                                  status  why
==================================================  ======  ===========================
``pool_exhausted``, ``too_many_waiting``            503     busy: retry after ``Retry-After``
``serialization_failure``, ``deadlock_detected``,   503     lost a race; retry at once
``lock_not_available``, ``sqlite_busy``
``connection_lost``, ``admin_shutdown``,            503     down: retry later
``cannot_connect_now``, ``insufficient_resources``,
``connect_failed``
``statement_timeout``                               503     ran past its deadline
``unique_violation``, ``check_violation``, …        409     conflicts with a row / a rule
``row_changed`` (``StaleDataError``)                409     changed or deleted meanwhile
``invalid_value`` (``DataError``)                   422     the client sent it
==================================================  ======  ===========================

Bodies are JSON ``{"detail": ..., "code": ..., "reason": ...}``
(:class:`~fastapi_dbpool.errors.ErrorBody`); they never contain the driver's message,
which can name hosts, users or values. The full error is logged instead.
``HTTPException`` and validation errors get the same shape, with a ``code`` derived
from the status, so that clients parse one body.
"""

from __future__ import annotations

import json
import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import STATEMENT_TIMEOUT, DatabaseUnavailable, classify, conflict_of

__all__ = ["install_error_handlers"]

logger = logging.getLogger("fastapi_dbpool")


def _is_query_canceled(error: BaseException) -> bool:
    return classify(error) is STATEMENT_TIMEOUT


async def _handle(request: Request, error: Exception) -> Response:
    failure = classify(error)
    if failure is None:
        raise error  # not ours to answer: the server's default 500 and traceback
    detail = failure.detail
    conflict = conflict_of(error) if failure.status == 409 else None
    if conflict is not None and (conflict.constraint or conflict.columns):
        # Name what conflicted: schema names, never the values or the driver's text.
        target = conflict.constraint or ", ".join(
            f"{conflict.table}.{column}" if conflict.table else column
            for column in conflict.columns
        )
        detail = f"{detail.removesuffix('.')}: {target}."
    logger.warning(
        "%s %s answered %d: %s",
        request.method,
        request.url.path,
        failure.status,
        _describe(error),
        extra={
            "event": "db_error",
            "reason": failure.reason,
            "code": failure.code,
            "status": failure.status,
        },
    )
    headers = None
    if failure.status == 503:
        retry_after = (
            error.retry_after if isinstance(error, DatabaseUnavailable) else failure.retry_after
        )
        headers = {"Retry-After": str(retry_after or 1)}
    body = {"detail": detail, "code": failure.code, "reason": failure.reason}
    return JSONResponse(body, status_code=failure.status, headers=headers)


def _describe(error: BaseException) -> str:
    # Our own errors carry safe, actionable messages; a driver's may carry secrets.
    if _is_query_canceled(error) and isinstance(error, sa_exc.DBAPIError):
        return (
            "statement cancelled: it ran past DB_STATEMENT_TIMEOUT_MS (or was cancelled "
            "by an administrator); make it faster or raise the timeout"
        )
    if isinstance(error, DatabaseUnavailable | sa_exc.TimeoutError) and not isinstance(
        error, sa_exc.DBAPIError
    ):
        return str(error)
    orig = getattr(error, "orig", None)
    name = type(orig if orig is not None else error).__name__
    sqlstate = getattr(orig, "sqlstate", None)
    return f"{name} (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else name


async def _validation_error(request: Request, error: Exception) -> Response:
    # FastAPI's own handler echoes the input back and encodes it as UTF-8, which
    # fails (a 500) on a lone surrogate such as "\ud800" in the body. Escaping
    # non-ASCII characters gives the same JSON for every valid input, and a 422
    # for that one.
    assert isinstance(error, RequestValidationError)
    body = json.dumps(
        {"detail": jsonable_encoder(error.errors()), "code": "validation_error"},
        ensure_ascii=True,
    )
    return Response(body, status_code=422, media_type="application/json")


def _status_code_name(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


async def _http_error(request: Request, error: Exception) -> Response:
    # FastAPI's default, plus a code: {"detail": "user 7 not found", "code": "not_found"}.
    assert isinstance(error, StarletteHTTPException)
    headers = getattr(error, "headers", None)
    if error.status_code in (204, 304) or error.status_code < 200:
        return Response(status_code=error.status_code, headers=headers)
    if error.status_code == 405:
        allowed = _allowed_methods(request, (headers or {}).get("Allow"))
        if allowed:
            headers = {**(headers or {}), "Allow": allowed}
    body = {"detail": error.detail, "code": _status_code_name(error.status_code)}
    return JSONResponse(body, status_code=error.status_code, headers=headers)


def _allowed_methods(request: Request, given: str | None) -> str | None:
    # Starlette's 405 names the methods of the one route that matched; a path served
    # by several routes (GET, PATCH, DELETE /users/{id}) allows all of theirs. The
    # app's OpenAPI paths list them (routes outside the schema keep Starlette's answer).
    openapi = getattr(request.app, "openapi", None)
    if openapi is None:
        return given
    path = request.url.path
    allowed: set[str] = set(given.split(", ")) if given else set()
    for template, operations in openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(template)), path):
            allowed |= {method.upper() for method in operations}
    return ", ".join(sorted(allowed)) if allowed else given


def install_error_handlers(app: Any) -> None:
    """Register the handlers on *app* (done by :meth:`Database.install`)."""
    for error_type in (DatabaseUnavailable, sa_exc.TimeoutError, sa_exc.DBAPIError, StaleDataError):
        app.add_exception_handler(error_type, _handle)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
