"""Transaction retry: re-run a whole unit of work that lost a race with another transaction.

Under concurrency PostgreSQL fails some transactions on purpose: a serialization failure
(SQLSTATE 40001, under REPEATABLE READ or SERIALIZABLE) or a deadlock it broke (40P01).
Nothing of the transaction was committed, and running it again from the start usually
succeeds. Only those two are retried (``Failure.retryable`` in :mod:`fastapi_dbpool.errors`):
a connection lost mid-COMMIT may have committed, and a full disk will not empty itself
in 50 ms.

The rule: **re-run only work whose only side effects are in the database.** An email
sent, a file written, a call to another service, a background task queued, all happen
again on each attempt. Hence retries are never implicit: background work and scripts use
:meth:`Database.transaction`, request handlers opt in with :func:`retry_transaction`.

Attempts wait an exponential backoff with full jitter (``uniform(0, base * 2**n)``,
capped), so that the transactions that collided do not collide again in step; the whole
unit is bounded by *max_seconds*. When the retries or the time run out, the last error
is raised as it was: the request is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, get_args

from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import classify
from ..pool.monitor import MONITOR_INFO_KEY

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["Attempt", "RetryPolicy", "Transaction", "check_retried_routes", "retry_transaction"]

logger = logging.getLogger("fastapi_dbpool")

P = ParamSpec("P")
R = TypeVar("R")

MARKER = "__fastapi_dbpool_retry__"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a unit of work is re-run.

    Attributes:
        retries: Attempts after the first (0: run once, never retry).
        backoff_s: Base of the exponential backoff, in seconds.
        max_backoff_s: Longest single wait, in seconds.
        max_seconds: Bound on the whole unit, attempts and waits included; no attempt
            starts once its wait would end past it.
    """

    retries: int = 3
    backoff_s: float = 0.02
    max_backoff_s: float = 0.5
    max_seconds: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_seconds <= 0:
            raise ValueError("retries and backoff_s must be >= 0, max_seconds > 0")

    def delay(self, attempt: int) -> float:
        """The wait before attempt *attempt* (1 = the first retry): full jitter."""
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


class _Budget:
    """One unit's attempts: decides, after a failure, whether and when to go again."""

    def __init__(self, policy: RetryPolicy, on_retry: Callable[[str], None] | None) -> None:
        self.policy = policy
        self.attempt = 0
        self.deadline = time.monotonic() + policy.max_seconds
        self.on_retry = on_retry

    async def again(self, error: BaseException) -> bool:
        """True after waiting, when *error* is retryable and the budget allows one more."""
        failure = classify(error)
        if failure is None or not failure.retryable or self.attempt >= self.policy.retries:
            return False
        self.attempt += 1
        delay = self.policy.delay(self.attempt)
        if time.monotonic() + delay >= self.deadline:
            return False
        if self.on_retry is not None:
            self.on_retry(failure.code)
        logger.info(
            "transaction retried after %s (attempt %d of %d, in %.3f s)",
            failure.code,
            self.attempt + 1,
            self.policy.retries + 1,
            delay,
            extra={"event": "transaction_retry", "code": failure.code, "attempt": self.attempt},
        )
        await asyncio.sleep(delay)
        return True


class Attempt:
    """One attempt of a :class:`Transaction`: ``async with attempt as session:``.

    The session commits when the block ends. A retryable failure, in the block or at
    the commit, is swallowed when another attempt follows; the loop then runs the block
    again with a new session.
    """

    def __init__(self, transaction: Transaction, budget: _Budget) -> None:
        self._transaction = transaction
        self._budget = budget
        self._opened: Any = None
        self.retry = False

    async def __aenter__(self) -> AsyncSession:
        self._opened = self._transaction.database.session(read_only=self._transaction.read_only)
        session: AsyncSession = await self._opened.__aenter__()
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        try:
            await self._opened.__aexit__(exc_type, exc, tb)  # commits, or rolls back
        except Exception as error:  # the block's error, or the commit's
            if await self._budget.again(error):
                self.retry = True
                return True
            raise
        return False


class Transaction:
    """A unit of work in a session of its own, re-run on a serialization failure or deadlock.

    Made by :meth:`Database.transaction`. Use it as a decorator (the function gets the
    session as its first argument and is called again on each attempt)::

        @database.transaction(retries=5)
        async def transfer(session: AsyncSession, source: int, target: int) -> None: ...

    or as a loop over attempts, for a block::

        async for attempt in database.transaction(retries=5):
            async with attempt as session:
                ...

    ``async with database.transaction() as session:`` runs the block once, like
    SQLAlchemy's ``engine.begin()`` (a context manager cannot run its block twice);
    asked for retries explicitly (``transaction(retries=5)``), it refuses.
    """

    def __init__(
        self,
        database: Database,
        policy: RetryPolicy,
        *,
        read_only: bool = False,
        once_as_block: bool = False,
    ) -> None:
        self.database = database
        self.policy = policy
        self.read_only = read_only
        # True when the retries are the default, not asked for: `async with` runs once.
        self._once_as_block = once_as_block
        self._single: Any = None

    def _on_retry(self, code: str) -> None:
        self.database.monitor.record_retry(code)

    async def __aiter__(self) -> AsyncIterator[Attempt]:
        budget = _Budget(self.policy, self._on_retry)
        while True:
            attempt = Attempt(self, budget)
            yield attempt
            if not attempt.retry:
                return

    def __call__(
        self, func: Callable[Concatenate[AsyncSession, P], Awaitable[R]]
    ) -> Callable[P, Awaitable[R]]:
        """Decorate *func*: each call runs it in a session, again on each retryable failure."""

        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            async for attempt in self:
                async with attempt as session:
                    result = await func(session, *args, **kwargs)
                if not attempt.retry:
                    return result
            raise AssertionError("unreachable: the last attempt returns or raises")

        return wrapper

    async def __aenter__(self) -> AsyncSession:
        if self.policy.retries and not self._once_as_block:
            raise TypeError(
                "`async with database.transaction(retries=...)` cannot re-run its block: "
                "use `async for attempt in database.transaction(...)` and "
                "`async with attempt as session`, or decorate a function"
            )
        self._single = self.database.session(read_only=self.read_only)
        session: AsyncSession = await self._single.__aenter__()
        return session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        single, self._single = self._single, None
        await single.__aexit__(exc_type, exc, tb)


def retry_transaction(
    retries: int = 3, *, max_seconds: float = 5.0, backoff_s: float = 0.02
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Mark a request handler as safe to re-run on a serialization failure or deadlock.

    Put it under the route decorator. The handler's ``SessionDep`` and ``ConnectionDep``
    arguments are committed by the wrapper, so that a failure at COMMIT is retried too;
    on a retryable failure they are rolled back and the handler is called again, with
    the same (already validated) arguments::

        @router.post("/transfers")
        @retry_transaction(retries=5)
        async def transfer(body: Transfer, session: SessionDep) -> Receipt: ...

    Only for handlers whose every side effect is in the database (see the module's
    docstring): a BackgroundTask added, a message sent, happen again on each attempt.
    """
    policy = RetryPolicy(retries=retries, max_seconds=max_seconds, backoff_s=backoff_s)

    def mark(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError("retry_transaction() marks `async def` handlers only")

        @functools.wraps(handler)
        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            units = [value for value in kwargs.values() if _is_unit(value)]
            budget = _Budget(policy, _recorder(units))
            while True:
                try:
                    result = await handler(*args, **kwargs)
                    for unit in units:
                        await _end(unit, commit=True)
                except Exception as error:
                    for unit in units:
                        await _end(unit, commit=False)
                    if await budget.again(error):
                        continue
                    raise
                return result

        setattr(run, MARKER, policy)
        # FastAPI reads the handler's parameters from the wrapper. Older releases (0.121)
        # resolve string annotations (`from __future__ import annotations`) in the
        # wrapper's module, not the handler's: give it the handler's resolved signature.
        with suppress(NameError):
            run.__signature__ = inspect.signature(handler, eval_str=True)  # type: ignore[attr-defined]
        return run

    return mark


def check_retried_routes(app: Any) -> None:
    """Refuse a retried handler that gets its session or connection through a sub-dependency.

    The marker commits and rolls back only the ``SessionDep``/``ConnectionDep`` that are
    the handler's own parameters. One reached only through another dependency (a
    repository, a service object) would stay in its failed transaction across
    attempts and commit after the response, outside the retries.

    Raises:
        TypeError: at start, naming the route, the dependency and what to write.
    """
    from fastapi.routing import APIRoute

    from .dependencies import ConnectionDep, ReadConnectionDep, ReadSessionDep, SessionDep

    aliases: dict[str, Any] = {"SessionDep": SessionDep, "ReadSessionDep": ReadSessionDep}
    aliases |= {"ConnectionDep": ConnectionDep, "ReadConnectionDep": ReadConnectionDep}
    units = {get_args(alias)[1].dependency: name for name, alias in aliases.items()}
    for route in getattr(app, "routes", ()):
        if not isinstance(route, APIRoute) or not hasattr(route.endpoint, MARKER):
            continue
        own = {
            dep.call
            for dep in route.dependant.dependencies
            if dep.name is not None and dep.use_cache and dep.call in units
        }
        for chain, dep in _nested(route.dependant.dependencies, ()):
            if dep.call in units and (dep.call not in own or not dep.use_cache):
                alias = units[dep.call]
                raise TypeError(
                    f"{route.path}: {route.name}() is marked @Database.retrying but gets its "
                    f"{alias} through the dependency {' -> '.join(chain)}, which the marker "
                    f"cannot commit or roll back between attempts. Add `session: {alias}` "
                    "to the handler's own parameters too: FastAPI gives the dependency the "
                    "same object, and the marker then ends it with each attempt."
                )


def _nested(deps: list[Any], chain: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every dependency that is not a handler parameter itself, with its path of names."""
    for dep in deps:
        name = dep.name or getattr(dep.call, "__name__", repr(dep.call))
        if chain or dep.name is None:  # nested, or in the route's dependencies=[...]
            yield (*chain, name), dep
        yield from _nested(dep.dependencies, (*chain, name))


def _is_unit(value: Any) -> bool:
    from .direct import DirectConnection

    return isinstance(value, AsyncSession | DirectConnection)


async def _end(unit: Any, *, commit: bool) -> None:
    """Commit or roll back *unit*; the dependency's own exit then has nothing left to do."""
    from .direct import close_direct

    if isinstance(unit, AsyncSession):
        await (unit.commit() if commit else unit.rollback())
    else:
        await close_direct(unit, commit=commit)


def _recorder(units: list[Any]) -> Callable[[str], None] | None:
    # The Database behind the handler's session or connection counts the retries.
    for unit in units:
        if isinstance(unit, AsyncSession):
            monitor = unit.info.get(MONITOR_INFO_KEY)
        else:
            monitor = unit._database.monitor
        if monitor is not None:
            return monitor.record_retry  # type: ignore[no-any-return]
    return None
