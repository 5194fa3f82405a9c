"""The ORM unit of work: one ``AsyncSession``, committed or rolled back exactly once.

Every handle of the request path ends the same way; this module does it for sessions,
:mod:`.direct` for direct connections and :mod:`.sync` for sync sessions:

=======================================  ==========================================
the work...                              the transaction
=======================================  ==========================================
returns                                  committed (a read-only unit: rolled back)
raises (``HTTPException`` included)      rolled back; the caller's error is raised
returns, but the commit fails            rolled back; the commit's error is raised
is cancelled mid-way                     rolled back in a task of its own, shielded
                                         from the cancellation, then re-raised
=======================================  ==========================================

A rollback that fails after an error is logged, never raised over the caller's error;
the connection is then invalidated by SQLAlchemy instead of going back dirty.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..pool.cleanup import run_to_completion
from ..sqlite.gate import WriteGate

__all__ = ["session_unit"]

logger = logging.getLogger("fastapi_dbpool")


@asynccontextmanager
async def session_unit(
    factory: async_sessionmaker[AsyncSession], *, read_only: bool, gate: WriteGate | None = None
) -> AsyncIterator[AsyncSession]:
    """Yield a new session of *factory*; end it as the table above says.

    On SQLite a writing session holds the write *gate* from before its first checkout
    until it has ended (see :mod:`fastapi_dbpool.sqlite.gate`).
    """
    writing: AbstractAsyncContextManager[object] = (
        gate.writing() if gate is not None and not read_only else nullcontext()
    )
    async with writing:
        session = factory()
        try:
            yield session
        except BaseException:
            # The caller's error is the one that matters; a failing rollback on a broken
            # connection is logged, and the connection is invalidated by SQLAlchemy.
            await run_to_completion(_discard_quietly(session))
            raise
        await run_to_completion(_discard(session) if read_only else _commit(session))


async def _commit(session: AsyncSession) -> None:
    """Commit and close; on failure roll back, close, and raise the commit's error."""
    try:
        await session.commit()
    except BaseException:
        await _discard(session)
        raise
    await session.close()


async def _discard(session: AsyncSession) -> None:
    """Roll back whatever is open and return the connection to the pool."""
    try:
        await session.rollback()
    finally:
        await session.close()


async def _discard_quietly(session: AsyncSession) -> None:
    try:
        await _discard(session)
    except Exception:
        logger.warning(
            "rollback failed after an error", exc_info=True, extra={"event": "rollback_failed"}
        )
