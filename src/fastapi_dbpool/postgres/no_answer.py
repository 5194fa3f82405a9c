"""A client-side deadline for a server that does not answer at all (PostgreSQL).

``statement_timeout`` is enforced by the server: it cannot help when the server never
sees the statement, or its answer never arrives (a black-holed network, a frozen host,
a partition that drops packets without a reset). The request would then wait for TCP
to give up, which takes about 15 minutes on Linux.

So asyncpg always gets a ``command_timeout`` (unless turned off):

* with ``DB_STATEMENT_TIMEOUT_MS`` set, that plus :data:`MARGIN_S`: a statement that ran
  too long is still cancelled by the server first (503 ``statement_timeout``, connection
  kept), and the client's deadline fires only when no answer came at all;
* without it, ``DB_NO_ANSWER_TIMEOUT_S`` (30 s by default; 0 turns the deadline off).
  The client cannot tell silence from a statement still running, so this is also the
  longest a statement may run: set it above your slowest statement, or above a
  ``statement_timeout`` set on the role or the server.

The deadline's ``TimeoutError`` says nothing about the connection's state, so the
connection is discarded (with the rest of the pool, as for any disconnect) and the
request answered 503 ``statement_timeout`` with ``Retry-After``: the statement may have
run, as when the server cancels it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, ExceptionContext

from ..errors import StatementTimeout
from ..settings import DatabaseSettings

__all__ = [
    "MARGIN_S",
    "command_timeout",
    "install_no_answer",
    "is_no_answer",
    "libpq_no_answer_options",
    "no_answer_error",
]

# Past the server's own deadline: time for its cancellation to reach us.
MARGIN_S = 1.0


def command_timeout(settings: DatabaseSettings) -> float | None:
    """Seconds asyncpg waits for any answer to a statement; None when turned off.

    ``DB_STATEMENT_TIMEOUT_MS`` + :data:`MARGIN_S` when a statement timeout is set,
    else ``DB_NO_ANSWER_TIMEOUT_S`` (None when 0).
    """
    if settings.statement_timeout_ms:
        return settings.statement_timeout_ms / 1000 + MARGIN_S
    return settings.no_answer_timeout_s or None


def libpq_no_answer_options(settings: DatabaseSettings) -> dict[str, int]:
    """Return the libpq options that end a sync connection whose packets go nowhere.

    psycopg has no client-side deadline for a statement, so the sync engine (``def``
    endpoints) leans on TCP instead, with the same deadline: ``tcp_user_timeout`` ends a
    connection whose sent data stays unacknowledged that long (dropped packets), and
    keepalives end an idle-looking one whose peer host stopped answering (a frozen
    host), after about two thirds of it. Neither helps when the server's host is up and
    its process silent (it acknowledges): the statement timeout covers that. Empty when
    the deadline is off.
    """
    seconds = command_timeout(settings)
    if seconds is None:
        return {}
    idle = max(1, int(seconds // 3))
    return {
        "tcp_user_timeout": max(1000, int(seconds * 1000)),
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": max(1, idle // 3),
        "keepalives_count": 3,
    }


def _source(settings: DatabaseSettings) -> str:
    if settings.statement_timeout_ms:
        return "DB_STATEMENT_TIMEOUT_MS + 1 s"
    return "DB_NO_ANSWER_TIMEOUT_S"


def is_no_answer(error: BaseException) -> bool:
    """True for the driver's own timeout (``command_timeout``), not SQLAlchemy's pool's."""
    return isinstance(error, TimeoutError) and not isinstance(error, sa_exc.SQLAlchemyError)


def no_answer_error(settings: DatabaseSettings) -> StatementTimeout:
    """The error a request gets when the server did not answer within the deadline."""
    seconds = command_timeout(settings)
    within = (
        f"within {seconds:g} s ({_source(settings)})"
        if seconds is not None
        else "within the command_timeout of DATABASE_URL"
    )
    return StatementTimeout(
        f"no answer from the database {within}: the network or the server is gone, or "
        "the statement ran longer; the connection was discarded"
    )


def install_no_answer(engine: Engine, settings: DatabaseSettings) -> None:
    """Discard a connection whose statement got no answer; raise StatementTimeout.

    Installed even with the deadline turned off (``DB_NO_ANSWER_TIMEOUT_S=0``): a
    ``command_timeout`` given in ``DATABASE_URL`` raises the same driver timeout, which
    must be answered 503 too, never 500.
    """

    @event.listens_for(engine, "handle_error")
    def _no_answer(context: ExceptionContext) -> Any:
        if not is_no_answer(context.original_exception):
            return None
        context.is_disconnect = True  # SQLAlchemy invalidates it (and the pool's older ones)
        return no_answer_error(settings)
