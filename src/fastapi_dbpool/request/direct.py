"""Direct execution: compiled SQLAlchemy Core statements run on the pooled driver connection.

An ``AsyncSession`` pays for generality on every statement: a greenlet hop, the
execution context, the result machinery, the ORM identity map. For a hot endpoint that
reads one row or inserts one, that is most of the request. :class:`DirectConnection`
keeps what matters and drops the rest:

* statements are still written with SQLAlchemy (``select``, ``insert``, ``update``,
  models' tables); each is compiled once per dialect and cached, with its bind and
  result processors (type decorators, JSON, SQLite datetimes keep working);
* the connection comes from the same pool, through ``pool.connect()``: the pool's
  events, its monitor and metrics, ``DB_POOL_TIMEOUT`` and its 503 all apply;
* the SQL goes straight to the driver (asyncpg's prepared-statement cache, or one
  aiosqlite call per statement), and rows come back as plain dicts.

Transactions: a read-only connection runs each statement on its own (a single
``SELECT`` needs no ``BEGIN``/``ROLLBACK`` pair) and refuses anything but a select. A
writing connection opens a transaction at its first statement (``BEGIN IMMEDIATE``
behind the SQLite write gate) and commits when the dependency exits, before the
response is sent; an error rolls it back. ``execute_committed()`` runs a single writing
statement in autocommit instead: one round trip, committed when it returns. Driver errors
are raised as SQLAlchemy's
(``IntegrityError``, ``OperationalError``…), so the error responses are unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CompoundSelect, Select, TextualSelect

from .._compat import (
    LRUCache,
    bind_processors,
    cache_key,
    checkin_is_io_free,
    checkin_without_reset,
    greenlet_spawn,
    result_processors,
    translate_driver_error,
)
from ..errors import DirectConnectionMisuse, TransactionOpen, WriteInReadSession
from ..pool.cleanup import run_to_completion
from ..pool.waiting import Deadline, carry_deadline
from ..postgres.no_answer import is_no_answer, no_answer_error
from ..postgres.options import local_statement_timeout
from ..sqlite.interrupt import arm_deadline

if TYPE_CHECKING:
    from sqlalchemy.pool import PoolProxiedConnection

    from ..database import Database

__all__ = ["DirectConnection"]

logger = logging.getLogger("fastapi_dbpool")

Row = dict[str, Any]

_READS = (Select, CompoundSelect, TextualSelect)


class _Plan:
    """A statement compiled for one dialect: SQL text, parameter order and processors."""

    __slots__ = ("compiled", "defaults", "keys", "order", "processors", "sql", "statement")

    def __init__(self, statement: Executable, compiled: SQLCompiler) -> None:
        self.statement = statement  # held so that id(statement) cannot be reused
        self.compiled = compiled
        self.sql = compiled.string
        self.order = list(compiled.positiontup or ())
        binds = bind_processors(compiled)
        self.processors: list[Any] = [binds.get(name) for name in self.order]
        # Python-side column defaults (``default=utcnow``, and ``onupdate=`` for an
        # UPDATE) that SQLAlchemy would compute in its execution context; a bare compile
        # leaves them to the caller.
        prefetch = [(column, column.default) for column in compiled.insert_prefetch]
        prefetch += [(column, column.onupdate) for column in compiled.update_prefetch]
        self.defaults = {
            compiled.bind_names[compiled.binds[column.key]]: default
            for column, default in prefetch
            if column.key in compiled.binds
        }
        self.keys = result_processors(compiled)

    def arguments(self, params: Mapping[str, Any] | None, extracted: Any = None) -> list[Any]:
        values = self.compiled.construct_params(params, extracted_parameters=extracted)
        for name, default in self.defaults.items():
            if values.get(name) is None:
                values[name] = _default_value(default, name)
        return [
            proc(values[name]) if proc is not None else values[name]
            for name, proc in zip(self.order, self.processors, strict=True)
        ]

    def rows(self, records: Any) -> list[Row]:
        keys = self.keys
        if not keys and records:
            # A text() statement that returns rows but declares no columns: SQLAlchemy
            # would name them from the cursor; a compiled plan has no names to give.
            raise DirectConnectionMisuse(
                "this text() statement returns rows but declares no columns; write "
                "text(...).columns(name=Type, ...) so that a direct connection can name them, "
                "or run it through a session"
            )
        if all(proc is None for _, proc in keys):
            names = [key for key, _ in keys]
            return [dict(zip(names, record, strict=True)) for record in records]
        return [
            {key: (proc(value) if proc is not None else value) for (key, proc), value in
             zip(keys, record, strict=True)}
            for record in records
        ]  # fmt: skip


def _refused_on_read(statement: Executable) -> str:
    if isinstance(statement, TextClause):
        return (
            "a text() statement on a read-only connection: a direct connection cannot tell "
            "whether it writes; declare its result columns, text(...).columns(...), which "
            "marks it a select, or use ConnectionDep if it writes"
        )
    return (
        f"{type(statement).__name__} sent through a read-only connection; "
        "use ConnectionDep (or SessionDep) for writes"
    )


def _default_value(default: Any, name: str) -> Any:
    if default is None:
        return None
    if getattr(default, "is_scalar", False):
        return default.arg
    if getattr(default, "is_callable", False):
        # A default that takes no argument ignores the context; one that reads it
        # (context.get_current_parameters()) meets _NoContext and gets the misuse error.
        return default.arg(_NoContext(name))
    raise _cannot_compute(name, f"a {type(default).__name__}")


class _NoContext:
    """The execution context a direct connection does not have, for column defaults."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        raise _cannot_compute(self._name, f"a function that reads its context ({attribute})")


def _cannot_compute(name: str, what: str) -> DirectConnectionMisuse:
    return DirectConnectionMisuse(
        f"the default of column {name!r} is {what}, which only a session's execution "
        f"can compute; a direct connection runs the compiled statement alone. Give the "
        f"value in the statement (.values({name}=...)), compute it in the database "
        "(server_default=), or run this statement through SessionDep"
    )


class StatementCache:
    """Compiled plans of one dialect, looked up by statement identity, then by cache key.

    Statements built once at import time (with ``bindparam()`` for the values) are found
    by identity, which costs a dict lookup. Statements built per call are found by
    SQLAlchemy's cache key, which costs what SQLAlchemy's own cache costs.
    """

    def __init__(self, dialect: Dialect, size: int = 500) -> None:
        self.dialect = dialect
        self.sqlite = dialect.name == "sqlite"
        self._by_id: LRUCache[int, _Plan] = LRUCache(size)
        self._by_key: LRUCache[Any, _Plan] = LRUCache(size)

    def plan(self, statement: Executable) -> tuple[_Plan, Any]:
        """Return the plan for *statement* and the literal values its cache key holds."""
        found = self._by_id.get(id(statement))
        if found is not None and found.statement is statement:
            return found, None
        key = cache_key(statement)
        if key is None:  # not cacheable: compile every time
            return _Plan(statement, self._compile(statement, None)), None
        found = self._by_key.get(key.key)
        if found is None:
            found = _Plan(statement, self._compile(statement, key))
            self._by_key[key.key] = found
            self._by_id[id(statement)] = found
            return found, None
        return found, key.bindparams

    def _compile(self, statement: Executable, key: Any) -> SQLCompiler:
        compiled = statement.compile(dialect=self.dialect, cache_key=key)  # type: ignore[attr-defined]
        assert isinstance(compiled, SQLCompiler)
        return compiled


class DirectConnection:
    """One request's pooled connection, executing SQLAlchemy Core statements directly.

    Get one from :data:`~fastapi_dbpool.ConnectionDep` / ``ReadConnectionDep`` or
    :meth:`Database.connection() <fastapi_dbpool.Database.connection>`. The connection
    is checked out at the first statement and returned when the block exits.

    Rows are dicts keyed by column name, ready for a response model::

        GET_USER = select(User.__table__).where(User.id == bindparam("user_id"))

        @app.get("/users/{user_id}", response_model=UserOut)
        async def get_user(user_id: int, db: ReadConnectionDep) -> dict[str, Any]:
            return await db.one(GET_USER, user_id=user_id)
    """

    __slots__ = (
        "_begin_sql",
        "_broken",
        "_cache",
        "_database",
        "_driver",
        "_fairy",
        "_gated",
        "_in_transaction",
        "_read_only",
        "_sqlite",
    )

    def __init__(self, database: Database, cache: StatementCache, *, read_only: bool) -> None:
        self._database = database
        self._cache = cache
        self._read_only = read_only
        # From the cache, not settings.backend, which parses the URL on every call.
        self._sqlite = cache.sqlite
        self._fairy: PoolProxiedConnection | None = None
        self._driver: Any = None
        self._in_transaction = False
        self._broken: BaseException | None = None
        # SQLite: the write gate's token while this connection holds the gate. Taken
        # before the checkout, given back after the checkin (see sqlite/gate.py).
        self._gated: object | None = None
        # PostgreSQL: what opens a transaction, None for reads that need none. Behind
        # PgBouncer the statement deadline is SET LOCAL in each transaction (see
        # postgres/options.py), so reads then run in one too: BEGIN and SET LOCAL go in a
        # single simple-query round trip, the ROLLBACK in another.
        local = local_statement_timeout(database.settings)
        if read_only:
            self._begin_sql = f"BEGIN READ ONLY; {local}" if local else None
        else:
            self._begin_sql = f"BEGIN; {local}" if local else "BEGIN"

    @property
    def read_only(self) -> bool:
        """True when this connection refuses statements that write."""
        return self._read_only

    # -- statements ---------------------------------------------------------------------

    async def all(self, statement: Executable, /, **params: Any) -> list[Row]:
        """Execute *statement* with *params*; return every row as a dict."""
        plan, extracted = self._cache.plan(statement)
        if self._read_only and not isinstance(statement, _READS):
            raise WriteInReadSession(_refused_on_read(statement))
        args = plan.arguments(params, extracted)
        return await self._execute(plan, args)

    async def one_or_none(self, statement: Executable, /, **params: Any) -> Row | None:
        """The first row as a dict, or None when there is none."""
        rows = await self.all(statement, **params)
        return rows[0] if rows else None

    async def scalar(self, statement: Executable, /, **params: Any) -> Any:
        """The first column of the first row, or None when there is no row."""
        rows = await self.all(statement, **params)
        return next(iter(rows[0].values())) if rows else None

    async def execute_committed(self, statement: Executable, /, **params: Any) -> list[Row]:
        """Run one writing statement as its own transaction; return its rows, committed.

        For a handler whose whole write is one statement (an ``INSERT ... RETURNING``,
        an ``UPDATE ... RETURNING``): the statement runs in autocommit, so its own
        atomicity is the transaction and it costs one round trip instead of three
        (``BEGIN``, the statement, ``COMMIT``). When this returns, the rows are
        committed, deferred constraints included; when it raises, nothing was
        committed, except if the connection died mid-statement (a ``DBAPIError`` with
        ``connection_invalidated``, answered 503), when the outcome is unknown. Either
        way a client cannot get a 2xx for a row that is not there. On SQLite the
        statement still passes the write gate, taken before the checkout and given
        back, with the connection, as soon as the statement completes.

        Statements run on this connection afterwards start a new transaction, which
        the dependency commits or rolls back as usual; the committed statement stays.

        Raises:
            WriteInReadSession: The connection is read-only.
            TransactionOpen: An earlier statement of this connection opened a
                transaction, which this statement would commit early.
        """
        self._check_committable()
        plan, extracted = self._cache.plan(statement)
        args = plan.arguments(params, extracted)
        await self._take_gate()
        if self._fairy is None:
            await self._checkout()
        try:
            records = await self._run(plan.sql, args)
        except Exception as error:
            # No retry on a dead connection, unlike reads: the server may have
            # committed the statement before the connection broke.
            translated = self._translate(error, plan.sql, args)
            await self._end_committed()
            raise translated from error
        except BaseException as error:
            # Cancelled while the statement runs: its outcome is unknown and the driver
            # may still be busy with it. Throw the connection away; the gate goes back
            # when the connection does.
            self._broken = error
            raise
        await self._end_committed()
        return plan.rows(records)

    def _check_committable(self) -> None:
        """Refuse execute_committed() where it would break a promise (see its Raises)."""
        if self._read_only:
            raise WriteInReadSession(
                "execute_committed() on a read-only connection; use ConnectionDep"
            )
        if self._in_transaction:
            raise TransactionOpen(
                "execute_committed() inside an open transaction would commit the statements "
                "before it early; make it the connection's first write, or use all()"
            )

    async def _end_committed(self) -> None:
        # The statement is over and nothing is open: on SQLite give back the gate, and
        # the connection with it, since a later statement must queue for the gate again
        # and may not hold a connection while it does.
        if self._gated is not None:
            await self._release()

    async def _execute(self, plan: _Plan, args: list[Any]) -> list[Row]:
        if not self._in_transaction:
            await self._take_gate()
        first = self._fairy is None
        if first:
            checkout_started = time.monotonic()
            await self._checkout()
        try:
            if not self._in_transaction and self._needs_transaction:
                await self._begin()
            return plan.rows(await self._run(plan.sql, args))
        except Exception as error:
            translated = self._translate(error, plan.sql, args)
            if (
                first
                and not self._in_transaction
                and isinstance(translated, sa_exc.DBAPIError)
                and translated.connection_invalidated
            ):
                # The pooled connection was dead (server restart, idle timeout): nothing
                # was done on it yet, so do it once on a fresh one, as pre-ping would.
                await self._release(invalidate=translated, keep_gate=True)
                # One DB_POOL_TIMEOUT for both checkouts: the retry waits for a permit
                # only as long as the first wait left, so a request still ends within
                # DB_POOL_TIMEOUT + DB_CONNECT_TIMEOUT (the dead connection needed none).
                pool_timeout = self._database.settings.pool_timeout
                carry_deadline(Deadline(checkout_started + pool_timeout))
                return await self._retry(plan, args)
            if self._database.settings.pgbouncer and _refused_before_sync(error):
                # asyncpg sends Parse/Describe with a Flush, and refused the arguments
                # before the Bind and its Sync: the server is left mid-query. Directly
                # that is harmless (the next Sync ends it), but PgBouncer keeps its server
                # connection tied to this client until then; a few such idle clients
                # and every other request waits for a server connection. Drop it.
                self._broken = translated
            raise translated from error
        except BaseException as error:
            # Cancelled mid-statement (the client went away, a request timeout): the
            # driver may still be running it, in asyncpg's protocol or aiosqlite's
            # thread. The connection is thrown away when released, without a ROLLBACK
            # that would queue behind the statement; SQLAlchemy's own Connection treats
            # a cancellation the same way. On SQLite the invalidation stops the statement
            # and releases the write lock (see _sqlite_interrupt.py).
            self._broken = error
            raise

    async def _retry(self, plan: _Plan, args: list[Any]) -> list[Row]:
        """Run *plan* once more on another connection, after the first one was dead.

        Its errors are translated like the first attempt's: the next pooled connection
        may have been killed with the first (``pg_terminate_backend`` of every backend,
        a restart), and a raw driver error would be answered 500.
        """
        try:
            await self._checkout()
            if self._needs_transaction:
                await self._begin()
            return plan.rows(await self._run(plan.sql, args))
        except Exception as error:
            translated = self._translate(error, plan.sql, args)
            if (
                isinstance(translated, sa_exc.DBAPIError)
                and not translated.connection_invalidated
                and _refused_before_sync(error)
            ):
                # The driver's own complaint about its connection's state ("another
                # operation is in progress") on a connection that broke with the first:
                # not the statement's fault. Throw it away and answer 503.
                translated.connection_invalidated = True
                self._broken = translated
            raise translated from error
        except BaseException as error:
            self._broken = error  # cancelled mid-statement, as in _execute
            raise

    async def _run(self, sql: str, args: list[Any]) -> Any:
        if self._sqlite:
            timeout_ms = self._database.settings.statement_timeout_ms
            if not timeout_ms:
                return await self._driver.execute_fetchall(sql, args)
            # The connection's progress handler enforces it (see _sqlite_interrupt.py).
            assert self._fairy is not None
            arm_deadline(self._fairy.info, timeout_ms / 1000)
            try:
                return await self._driver.execute_fetchall(sql, args)
            finally:
                arm_deadline(self._fairy.info, None)
        return await self._driver.fetch(sql, *args)

    async def _begin(self) -> None:
        if self._sqlite:
            # The gate was taken before the checkout (_take_gate).
            await self._driver.execute("BEGIN IMMEDIATE")
        else:
            await self._driver.execute(self._begin_sql or "BEGIN")
        self._in_transaction = True

    @property
    def _needs_transaction(self) -> bool:
        return not self._read_only or (not self._sqlite and self._begin_sql is not None)

    # -- connection ---------------------------------------------------------------------

    async def _take_gate(self) -> None:
        """On SQLite, a writing connection queues for the write gate before its checkout.

        A connection still checked out without the gate (after ``execute_committed``)
        goes back first: nothing may wait for the gate while holding a connection.
        """
        gate = self._database.write_gate
        if gate is None or self._read_only or self._gated is not None:
            return
        if self._fairy is not None:
            await self._release()
        token = object()
        await gate.acquire_async(token)
        self._gated = token

    def _give_gate(self) -> None:
        token, self._gated = self._gated, None
        if token is not None:
            gate = self._database.write_gate
            if gate is not None:
                gate.release(token)

    async def _checkout(self) -> None:
        pool = self._database.engine.sync_engine.pool
        try:
            fairy = await greenlet_spawn(pool.connect)
        except BaseException:
            self._give_gate()  # no connection: nothing to write with
            raise
        self._fairy = fairy
        self._driver = fairy.driver_connection

    async def _release(
        self, *, invalidate: BaseException | None = None, keep_gate: bool = False
    ) -> None:
        try:
            await self._checkin(invalidate)
        finally:
            if not keep_gate:
                self._give_gate()  # after the checkin: the lock is SQLite's until then

    async def _checkin(self, invalidate: BaseException | None) -> None:
        fairy, self._fairy, self._driver = self._fairy, None, None
        self._in_transaction = False
        invalidate, self._broken = invalidate or self._broken, None
        if fairy is None:
            return
        if invalidate is not None:
            await greenlet_spawn(fairy.invalidate, invalidate)
            await greenlet_spawn(fairy.close)
            return
        # No transaction is open (never begun, or committed / rolled back above), so the
        # pool's rollback-on-return has nothing to do; on SQLite it would cost a thread
        # hop per request. SQLAlchemy's own Connection checks in the same way. When the
        # checkin cannot do I/O either, it runs here, without a greenlet (~10 us).
        if checkin_is_io_free(fairy):
            checkin_without_reset(fairy)
        else:
            await greenlet_spawn(checkin_without_reset, fairy)

    async def close(self, *, commit: bool) -> None:
        """End the transaction (commit if *commit*, else roll back) and return the connection.

        A failed commit is raised (as SQLAlchemy's error); a failed rollback throws the
        connection away instead of returning it dirty.
        """
        if self._fairy is None:
            return
        if not self._in_transaction or self._broken is not None:
            await self._release()
            return
        try:
            await self._driver.execute("COMMIT" if commit else "ROLLBACK")
        except Exception as error:
            translated = self._translate(error, "COMMIT" if commit else "ROLLBACK", [])
            if commit:
                await self._rollback_quietly()
                raise translated from error
            logger.warning("rollback failed: %s", type(error).__name__)
            await self._release(invalidate=translated)
            return
        except BaseException as error:
            await self._release(invalidate=error)
            raise
        await self._release()

    async def _rollback_quietly(self) -> None:
        try:
            await self._driver.execute("ROLLBACK")
        except Exception as error:
            await self._release(invalidate=error)
        else:
            await self._release()

    def _translate(self, error: Exception, sql: str, args: list[Any]) -> Exception:
        """Raise the driver's *error* as the SQLAlchemy exception a session would raise."""
        if isinstance(error, sa_exc.SQLAlchemyError | WriteInReadSession):
            return error
        if is_no_answer(error):
            # The server never answered (see _no_answer.py): discard the connection.
            timed_out = no_answer_error(self._database.settings)
            self._broken = timed_out
            return timed_out
        dialect = self._database.engine.dialect
        dbapi_error_class = dialect.loaded_dbapi.Error
        translated: Exception = error
        adapter: Any = self._fairy.dbapi_connection if self._fairy is not None else None
        if adapter is not None and not isinstance(error, dbapi_error_class):
            translated = translate_driver_error(adapter, error)
        if not isinstance(translated, dbapi_error_class):
            return translated
        invalidated = dialect.is_disconnect(translated, adapter, None)
        wrapped = sa_exc.DBAPIError.instance(
            sql,
            args,
            translated,
            dbapi_error_class,
            connection_invalidated=invalidated,
            dialect=dialect,
        )
        if invalidated:
            self._broken = wrapped  # invalidated when the connection is released
        return wrapped


def _refused_before_sync(error: BaseException) -> bool:
    """True for an error asyncpg raised itself (an argument it cannot encode).

    The server's errors carry a severity; asyncpg's own ``DataError`` for a bad
    argument has none.
    """
    return (
        not isinstance(error, sa_exc.SQLAlchemyError) and getattr(error, "severity", None) is None
    )


async def close_direct(connection: DirectConnection, *, commit: bool) -> None:
    """Close *connection*, shielded from the caller's cancellation when there is work."""
    if connection._fairy is None:
        connection._give_gate()  # taken, but its checkout failed or never came
        return
    if not connection._in_transaction and connection._broken is None:
        # Checkin of a connection without a transaction skips the pool's rollback, so
        # it does not await (unless an overflow connection is closed) and cannot be
        # interrupted half-way; skip the cost of a task.
        await connection.close(commit=False)
        return
    await run_to_completion(connection.close(commit=commit))
