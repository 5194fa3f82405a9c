"""A client-side deadline for a server that does not answer at all (PostgreSQL).

``statement_timeout`` is enforced by the server: it cannot help when the server never
sees the statement, or its answer never arrives (a black-holed network, a frozen host,
a partition that drops packets without a reset). The request would then wait for TCP
to give up, which takes minutes.

So with ``DB_STATEMENT_TIMEOUT_MS`` set, asyncpg gets a ``command_timeout`` of that
plus :data:`MARGIN_S`: a statement that ran too long is still cancelled by the server
first (503 ``statement_timeout``, connection kept), and the client's deadline fires only
when no answer came at all. Its ``TimeoutError`` says nothing about the connection's
state, so the connection is discarded (with the rest of the pool, as for any
disconnect) and the request answered 503 like a statement timeout.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, ExceptionContext

from ..errors import StatementTimeout
from ..settings import DatabaseSettings

__all__ = ["MARGIN_S", "command_timeout", "install_no_answer", "is_no_answer", "no_answer_error"]

# Past the server's own deadline: time for its cancellation to reach us.
MARGIN_S = 1.0


def command_timeout(settings: DatabaseSettings) -> float | None:
    """Seconds asyncpg waits for any answer, or None without DB_STATEMENT_TIMEOUT_MS."""
    if not settings.statement_timeout_ms:
        return None
    return settings.statement_timeout_ms / 1000 + MARGIN_S


def is_no_answer(error: BaseException) -> bool:
    """True for the driver's own timeout (``command_timeout``), not SQLAlchemy's pool's."""
    return isinstance(error, TimeoutError) and not isinstance(error, sa_exc.SQLAlchemyError)


def no_answer_error(settings: DatabaseSettings) -> StatementTimeout:
    """The error a request gets when the server did not answer within the deadline."""
    return StatementTimeout(
        f"no answer from the database within {command_timeout(settings) or 0:g} s "
        "(DB_STATEMENT_TIMEOUT_MS + 1 s): the network or the server is gone; "
        "the connection was discarded"
    )


def install_no_answer(engine: Engine, settings: DatabaseSettings) -> None:
    """Discard a connection whose statement got no answer; raise StatementTimeout."""
    if command_timeout(settings) is None:
        return

    @event.listens_for(engine, "handle_error")
    def _no_answer(context: ExceptionContext) -> Any:
        if not is_no_answer(context.original_exception):
            return None
        context.is_disconnect = True  # SQLAlchemy invalidates it (and the pool's older ones)
        return no_answer_error(settings)
