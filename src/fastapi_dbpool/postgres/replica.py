"""Replica choice: where read-only work runs, and falling back to the primary.

With ``DATABASE_REPLICA_URL`` set, read-only sessions and connections go to a second
pool on a PostgreSQL hot standby. When the replica fails to connect (or a connection
to it is lost), that request fails with a 503, since its reads may already have
happened, and the next ``DB_REPLICA_RETRY_S`` seconds of reads go to the primary.
Every read path (``ReadSessionDep``, ``ReadConnectionDep``, ``Database.session`` and
``Database.connection`` with ``read_only=True``) asks :class:`ReplicaRouter`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Generic, TypeVar

from sqlalchemy.exc import DBAPIError

from ..errors import ConnectFailed

__all__ = ["ReplicaRouter"]

logger = logging.getLogger("fastapi_dbpool")

D = TypeVar("D")
T = TypeVar("T")


class ReplicaRouter(Generic[D]):
    """Decide, per read, whether the replica serves it; mark the replica down when it fails.

    Args:
        replica: The replica's database (a pool of its own), or None without one.
        retry_s: Seconds reads stay on the primary after the replica failed.
    """

    def __init__(self, replica: D | None, retry_s: float) -> None:
        self.replica = replica
        self.retry_s = retry_s
        self._down_until = 0.0

    def choose(self) -> D | None:
        """The replica if reads may go there now, else None (read on the primary)."""
        if self.replica is None or time.monotonic() < self._down_until:
            return None
        return self.replica

    @asynccontextmanager
    async def watch(self, opened: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
        """Run *opened* (a session or connection on the replica), noting a lost replica."""
        try:
            async with opened as handle:
                yield handle
        except (ConnectFailed, DBAPIError) as error:
            if isinstance(error, DBAPIError) and not error.connection_invalidated:
                raise  # a query's own error, not the replica going away
            self._down_until = time.monotonic() + self.retry_s
            logger.warning(
                "replica unreachable; reads go to the primary for %g s",
                self.retry_s,
                extra={"pool": "replica", "event": "replica_down"},
            )
            raise
