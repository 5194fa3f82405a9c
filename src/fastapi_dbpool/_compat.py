"""Every use of a SQLAlchemy private API, in one place, with the versions it was checked on.

fastapi_dbpool supports SQLAlchemy 2.0 and 2.1. Where it needs more than the public API
(running a coroutine from the pool's greenlet, the pool's checkout hooks, a compiled
statement's processors), it goes through this module, so that a new SQLAlchemy release
is checked here and nowhere else. Checked on SQLAlchemy 2.0.45 and 2.1.0b1+.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy

__all__ = ["SQLALCHEMY_2_1", "await_", "greenlet_spawn"]

SQLALCHEMY_2_1 = tuple(int(part) for part in sqlalchemy.__version__.split(".")[:2]) >= (2, 1)

# Run a coroutine from sync code that runs inside SQLAlchemy's greenlet (the pool's
# checkout). 2.1 renamed ``await_only`` to ``await_``; both are in sqlalchemy.util.
try:
    from sqlalchemy.util import await_  # 2.1
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as await_  # type: ignore[attr-defined,no-redef,unused-ignore]

# Run sync code in a greenlet from async code (what AsyncSession does for each call).
from sqlalchemy.util import greenlet_spawn  # noqa: E402  (2.0 and 2.1)


def connection_record(fairy: Any) -> Any:
    """The pool entry behind a checked-out connection (``_connection_record``, 2.0 and 2.1)."""
    return fairy._connection_record
