"""Every use of a SQLAlchemy private API, in one place, with the versions it was checked on.

fastapi_dbpool supports SQLAlchemy 2.0 (from 2.0.58, the oldest release the suite ran
on) and 2.1; ``pyproject.toml`` says ``>=2.0.58,!=2.0.59,<2.2``. 2.0.59 is left out: with
it, cancelling a task no longer stops its aiosqlite statement (the cancellation tests
take 20 s instead of 3 and time out in about half the runs). Where it needs more than the
public API (running a coroutine from the pool's greenlet, the queue pool's checkout and
return hooks, a compiled statement's processors), it goes through this module, so that
a new SQLAlchemy release is checked here and nowhere else: ``make test`` runs on the
newest 2.1, ``make test-sa20`` on the newest 2.0. Each entry says what it touches and
where it was checked.

Checked on SQLAlchemy 2.0.58 and 2.1.9 (the CI's two lines: ``make test-sa20`` and
``make test``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import sqlalchemy
from sqlalchemy.engine import Dialect
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool, QueuePool

# An LRU dict, and the thread-safe queue QueuePool uses for threads: both importable
# from these paths on 2.0 and 2.1 (not listed in the docs).
from sqlalchemy.util import LRUCache
from sqlalchemy.util.queue import Queue

__all__ = [
    "SQLALCHEMY_2_1",
    "LRUCache",
    "QueuePoolHooks",
    "await_",
    "bind_processors",
    "cache_key",
    "checkin_is_io_free",
    "checkin_without_reset",
    "connection_record",
    "driver_errors",
    "greenlet_spawn",
    "mapped_metadata",
    "max_overflow",
    "result_processors",
    "threaded",
    "translate_driver_error",
]

SQLALCHEMY_2_1 = tuple(int(part) for part in sqlalchemy.__version__.split(".")[:2]) >= (2, 1)

# Run a coroutine from sync code that runs inside SQLAlchemy's greenlet (the pool's
# checkout). 2.1 renamed ``await_only`` to ``await_``; both are in sqlalchemy.util.
try:
    from sqlalchemy.util import await_  # type: ignore[attr-defined,unused-ignore]  # 2.1
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as await_  # type: ignore[attr-defined,no-redef,unused-ignore]

# Run sync code in a greenlet from async code (what AsyncSession does for each call).
from sqlalchemy.util import greenlet_spawn  # noqa: E402  (2.0 and 2.1)

P = TypeVar("P", bound=Pool)


# -- the pool ---------------------------------------------------------------------------


class QueuePoolHooks(AsyncAdaptedQueuePool):
    """SQLAlchemy's async queue pool with its two private hooks under public names.

    ``_do_get`` (a caller takes a connection record) and ``_do_return_conn`` (a record
    comes back) are the methods every QueuePool subclass overrides (2.0 and 2.1 alike);
    subclasses override :meth:`get_record` and :meth:`return_record` instead, and read
    :attr:`is_asyncio` and :attr:`engine_dialect` rather than the private attributes
    behind them.
    """

    def _do_get(self) -> ConnectionPoolEntry:
        return self.get_record(super()._do_get)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        self.return_record(record, super()._do_return_conn)

    def get_record(self, take: Callable[[], ConnectionPoolEntry]) -> ConnectionPoolEntry:
        """Return a connection record; *take* is SQLAlchemy's own checkout."""
        return take()

    def return_record(
        self, record: ConnectionPoolEntry, put: Callable[[ConnectionPoolEntry], None]
    ) -> None:
        """Give *record* back; *put* is SQLAlchemy's own return."""
        put(record)

    @property
    def is_asyncio(self) -> bool:
        """True for the asyncio flavour (``Pool._is_asyncio``)."""
        return bool(self._is_asyncio)

    @property
    def engine_dialect(self) -> Any:
        """The engine's dialect (``Pool._dialect``), or None for a bare pool."""
        return getattr(self, "_dialect", None)


def threaded(cls: type[P]) -> type[P]:
    """Turn an async queue pool class into its thread-safe flavour.

    What ``QueuePool`` differs from ``AsyncAdaptedQueuePool`` by: ``_is_asyncio`` and
    the queue class (2.0 and 2.1).
    """
    # setattr: typed as a hybrid property on 2.1, a plain class attribute on 2.0.
    setattr(cls, "_is_asyncio", False)  # noqa: B010
    setattr(cls, "_queue_class", Queue)  # noqa: B010
    return cls


def max_overflow(pool: QueuePool) -> int:
    """``max_overflow`` of *pool*, 0 for "no limit" (-1); ``QueuePool._max_overflow``."""
    return max(int(pool._max_overflow), 0)


def connection_record(fairy: Any) -> ConnectionPoolEntry:
    """The pool entry behind a checked-out connection (``_connection_record``, 2.0 and 2.1)."""
    record: ConnectionPoolEntry = fairy._connection_record
    return record


def checkin_without_reset(fairy: Any) -> None:
    """Return *fairy* to its pool, skipping the reset (``_checkin(transaction_was_reset)``).

    For a connection known to have no transaction open: SQLAlchemy's own ``Connection``
    checks in this way after a commit (2.0 and 2.1).
    """
    fairy._checkin(True)


def checkin_is_io_free(fairy: Any) -> bool:
    """True when :func:`checkin_without_reset` of *fairy* cannot touch the network.

    Then it may run on the event loop without a greenlet. The checkin of a connection
    without a transaction does I/O only to close it: when the pool's queue is full
    (an overflow connection comes back: ``overflow() > 0``), or when a ``reset`` event
    listener, which may talk to the server, is installed (the pool's ``dispatch``; 2.0
    and 2.1). The ``checkin`` listeners run either way: the library's are plain code.
    """
    pool = fairy._pool
    return (
        fairy.dbapi_connection is not None
        and not pool.dispatch.reset
        and isinstance(pool, QueuePool)
        and pool.overflow() <= 0
    )


# -- driver errors ----------------------------------------------------------------------


def driver_errors(dialect: Dialect | None) -> tuple[type[BaseException], ...]:
    """The exception classes the driver raises while opening a connection.

    The adapted DB-API's ``Error``; on SQLAlchemy 2.0, asyncpg's connect errors are not
    translated into it (2.1 translates them), so asyncpg's own base classes are added.
    """
    dbapi = getattr(dialect, "loaded_dbapi", None)
    error = getattr(dbapi, "Error", None)
    found: list[type[BaseException]] = []
    if isinstance(error, type) and issubclass(error, BaseException):
        found.append(error)
    if not SQLALCHEMY_2_1 and getattr(dialect, "driver", None) == "asyncpg":
        import asyncpg

        found += [asyncpg.PostgresError, asyncpg.InterfaceError]
    return tuple(found)


def translate_driver_error(adapter: Any, error: Exception) -> Exception:
    """The adapted DB-API error for a raw driver *error* (the adapter's ``_handle_exception``).

    What SQLAlchemy's async adapters do for each cursor call: 2.0 and 2.1 both raise the
    translated error from ``_handle_exception``; *error* comes back unchanged when
    there is no translation.
    """
    handle = getattr(adapter, "_handle_exception", None)
    if handle is None:
        return error
    try:
        handle(error)
    except Exception as mapped:
        return mapped
    return error


# -- compiled statements ----------------------------------------------------------------


def cache_key(statement: Any) -> Any:
    """SQLAlchemy's cache key of *statement*, or None (``_generate_cache_key``, 2.0 and 2.1)."""
    return statement._generate_cache_key()


def bind_processors(compiled: Any) -> Mapping[str, Any]:
    """Bind parameter name -> the dialect's value processor (``_bind_processors``)."""
    processors: Mapping[str, Any] = compiled._bind_processors
    return processors


def result_processors(compiled: Any) -> list[tuple[str, Any]]:
    """(column key, result processor or None) per result column of *compiled*.

    ``_result_columns`` and ``TypeEngine._cached_result_processor``, as SQLAlchemy's
    cursor result builds them (2.0 and 2.1).
    """
    dialect = compiled.dialect
    return [
        (entry.keyname, entry.type._cached_result_processor(dialect, None))
        for entry in compiled._result_columns
    ]


# -- the ORM ----------------------------------------------------------------------------


def mapped_metadata() -> list[Any]:
    """The ``MetaData`` of every mapped class in the process, one entry per mapper.

    From the ORM's registry of registries (``sqlalchemy.orm.mapper._all_registries``,
    2.0 and 2.1), which ``configure_mappers()`` walks too.
    """
    from sqlalchemy.orm import mapperlib

    found: list[Any] = []
    for registry in mapperlib._all_registries():
        found.extend(getattr(mapper.local_table, "metadata", None) for mapper in registry.mappers)
    return found


def driver_exception(error: BaseException) -> BaseException:
    """The driver's own exception behind SQLAlchemy's adapted DBAPI error (asyncpg's).

    2.1 keeps it as ``.orig`` on the adapted error; 2.0 only chains it (``__cause__``).
    Checked on 2.0.58 and 2.1.9.
    """
    inner = getattr(error, "orig", None)
    if isinstance(inner, BaseException):
        return inner
    cause = error.__cause__
    return cause if cause is not None else error
