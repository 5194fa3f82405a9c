"""What the app's routes ask for, checked when the app starts (``Database.install``).

Two mistakes that would otherwise show only under load, or at the first request:

* a sync session (``SyncSessionDep``, ``SyncReadSessionDep``) taken by an ``async def``
  endpoint or dependency: every statement would block the event loop, and every other
  request with it (on PostgreSQL, and on SQLite reads);
* an alias of :mod:`fastapi_dbpool.sqlmodel` on a Database whose sessions are
  SQLAlchemy's (the app also maps tables outside ``SQLModel.metadata``, or named other
  classes): ``session.exec()`` would raise AttributeError at run time.

Every route is found however deeply its router is included (older FastAPI copies them
into ``app.routes``; newer versions keep included routers as entries of their own), and
the dependency tree (``route.dependant``) of each is walked in full.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from ..errors import DBPoolError
from .classes import SessionClasses
from .dependencies import _connection, _read_connection, _read_session, _session
from .sync import _sync_read_session, _sync_session

__all__ = ["PoolUse", "check_routes", "mark_dependency", "pools_used"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class _Mark:
    alias: str  # what the user wrote, for the messages
    sync: bool  # yields a sync Session
    session_class: type | None  # the class the alias is typed as (SQLModel's), if any


# By id(): a dependency may be an unhashable callable object.
_MARKS: dict[int, tuple[Callable[..., Any], _Mark]] = {}


def mark_dependency(func: F, alias: str, *, sync: bool, session_class: type | None = None) -> F:
    """Record that *func* is the dependency behind *alias*, for :func:`check_routes`.

    Args:
        func: The dependency function.
        alias: The alias's public name, as the error messages give it.
        sync: It yields a sync session, which an ``async def`` callable may not take.
        session_class: The class the alias is typed as; the database's sessions must be
            of it (or a subclass).
    """
    _MARKS[id(func)] = (func, _Mark(alias, sync, session_class))
    return func


mark_dependency(_sync_session, "SyncSessionDep", sync=True)
mark_dependency(_sync_read_session, "SyncReadSessionDep", sync=True)
mark_dependency(_session, "SessionDep", sync=False)
mark_dependency(_read_session, "ReadSessionDep", sync=False)
mark_dependency(_connection, "ConnectionDep", sync=False)
mark_dependency(_read_connection, "ReadConnectionDep", sync=False)


@dataclass(frozen=True, slots=True)
class PoolUse:
    """Which of a Database's pools an app's routes take connections from."""

    async_pool: bool
    sync_pool: bool


def pools_used(routes: Iterable[Any], *, also_async: Iterable[Any] = ()) -> PoolUse:
    """Which pools *routes* take connections from, found in their dependency trees.

    Args:
        routes: The app's ``app.routes``.
        also_async: Dependency callables that count as using the async pool although
            they are not marked (``DatabaseDep``'s: its handlers open what they like).
    """
    extra = {id(call) for call in also_async}
    uses_async = uses_sync = False
    for route in _walk(routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            continue
        for call in _calls(dependant, set()):
            found = _MARKS.get(id(call))
            if found is not None and found[0] is call:
                uses_sync = uses_sync or found[1].sync
                uses_async = uses_async or not found[1].sync
            elif id(call) in extra:
                uses_async = True
    return PoolUse(async_pool=uses_async, sync_pool=uses_sync)


def _calls(dependant: Any, seen: set[int]) -> Iterator[Any]:
    if id(dependant) in seen:
        return
    seen.add(id(dependant))
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub, seen)


def check_routes(routes: Iterable[Any], classes: SessionClasses) -> None:
    """Check every route's dependencies against the rules above.

    Args:
        routes: The app's ``app.routes``.
        classes: The (async, sync) session classes the database makes.

    Raises:
        DBPoolError: a sync session is taken by an ``async def`` callable, or a SQLModel
            alias is used while the sessions are not SQLModel's; the message names the
            route and what to write instead.
    """
    for route in _walk(routes):
        dependant = getattr(route, "dependant", None)
        if dependant is not None:
            _check(route, dependant, classes, seen=set())


def _walk(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        yield route
        if getattr(route, "dependant", None) is not None:
            continue
        # An included router: FastAPI 0.121 copies its routes into app.routes; 0.165
        # keeps it as one entry, whose effective routes carry the full path and the
        # include's dependencies.
        effective = getattr(route, "effective_route_contexts", None)
        if callable(effective):
            yield from _walk(effective())
            continue
        # A Mount of a router (or of a sub-application) has routes of its own.
        inner = getattr(route, "routes", None)
        if inner:
            yield from _walk(inner)


def _check(route: Any, dependant: Any, classes: SessionClasses, seen: set[int]) -> None:
    if id(dependant) in seen:
        return
    seen.add(id(dependant))
    on_loop = _runs_on_loop(dependant.call)
    for sub in dependant.dependencies:
        found = _MARKS.get(id(sub.call))
        if found is not None and found[0] is sub.call:
            _check_use(route, dependant, found[1], on_loop, classes)
        _check(route, sub, classes, seen)


def _check_use(
    route: Any, dependant: Any, mark: _Mark, on_loop: bool, classes: SessionClasses
) -> None:
    where = _describe(route)
    if mark.sync and on_loop:
        taker = (
            "the endpoint"
            if dependant.call is getattr(route, "endpoint", None)
            else f"its dependency {_name(dependant.call)}"
        )
        raise DBPoolError(
            f"{where}: {taker} is `async def` but takes {mark.alias}; a sync session "
            "would block the event loop, and every other request with it. Use SessionDep "
            "(or ReadSessionDep) and await its statements, or make it a plain `def` "
            "function, which FastAPI runs in a worker thread"
        )
    if mark.session_class is not None:
        made = classes[1] if mark.sync else classes[0]
        if not issubclass(made, mark.session_class):
            expected = f"{mark.session_class.__module__}.{mark.session_class.__qualname__}"
            raise DBPoolError(
                f"{where} takes fastapi_dbpool.sqlmodel.{mark.alias}, typed as {expected}, "
                f"but the database makes {made.__module__}.{made.__qualname__} sessions, "
                "which have no .exec() (SQLModel's sessions are chosen by themselves only "
                "when every mapped table is a SQLModel table): pass "
                "Database(session_class=sqlmodel.ext.asyncio.session.AsyncSession), which "
                "also makes the sync sessions sqlmodel.Session, or use the aliases of "
                "fastapi_dbpool"
            )


def _runs_on_loop(call: Any) -> bool:
    """True if FastAPI runs *call* on the event loop (``async def``, async generator)."""
    while isinstance(call, partial):
        call = call.func
    if inspect.isclass(call):
        return False
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    if inspect.isroutine(call):
        return False
    dunder = getattr(call, "__call__", None)  # noqa: B004 - a callable object's method
    return inspect.iscoroutinefunction(dunder) or inspect.isasyncgenfunction(dunder)


def _describe(route: Any) -> str:
    methods = ",".join(sorted(getattr(route, "methods", None) or ())) or "WEBSOCKET"
    path = getattr(route, "path", "?")
    endpoint = getattr(route, "endpoint", None)
    return f"route {methods} {path} ({_name(endpoint)})"


def _name(call: Any) -> str:
    module = getattr(call, "__module__", None)
    name = getattr(call, "__qualname__", None) or type(call).__qualname__
    return f"{module}.{name}" if module else name
