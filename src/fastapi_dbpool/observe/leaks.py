"""Leak detection: warn when a connection stays checked out longer than it should.

Like HikariCP's ``leakDetectionThreshold``. With ``DB_LEAK_THRESHOLD_S`` set, each
checkout notes where it happened (the application's frames and the request's method
and route template) and arms a timer on the event loop. If the connection is still
out when the timer fires, one WARNING says how long it has been held, by which
endpoint and from which lines (event ``leak_suspected``), and
``PoolMonitor.leaks_total`` grows by one. When the connection finally comes back, an
INFO line says so (event ``leak_returned``). A connection held that long is not
always lost, a slow report holds one legitimately, hence "suspected".

The cost is paid only when the setting is on: one walk up the stack per checkout that
keeps ``(code, line)`` pairs of application frames (whether a code object belongs to
the application is decided once and cached), and one timer per checkout, cancelled at
checkin. Frames are formatted only when a warning is logged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from types import CodeType, FrameType
from typing import Any

from greenlet import getcurrent  # type: ignore[import-untyped]  # ships no annotations
from sqlalchemy.pool import ConnectionPoolEntry
from starlette.requests import HTTPConnection

from ..pool.monitor import PoolMonitor

__all__ = ["Endpoint", "LeakDetector", "current_endpoint", "endpoint_context", "watch_for_leaks"]

logger = logging.getLogger("fastapi_dbpool")

# Application frames kept per checkout, innermost first.
MAX_FRAMES = 12

_LEASE = "fastapi_dbpool.lease"

# Top-level packages whose frames never tell where the application took a connection.
_INFRASTRUCTURE = frozenset(
    {
        "fastapi_dbpool",
        "sqlalchemy",
        "fastapi",
        "starlette",
        "anyio",
        "asyncio",
        "uvicorn",
        "greenlet",
        "pydantic",
        "httpx",
        "httpcore",
        "concurrent",
        "contextlib",
        "threading",
        "functools",
    }
)
# The standard library, installed packages, and console scripts (bin/uvicorn, bin/pytest).
_LIBRARY_DIRS = tuple(
    sorted(
        {
            sysconfig.get_paths()[key]
            for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts")
        }
    )
)
_PACKAGE_DIRS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")

# Whether a code object is the application's; code objects live as long as their
# functions, so this stays as small as the program.
_is_app_code: dict[CodeType, bool] = {}

Frames = tuple[tuple[CodeType, int], ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The request a connection was taken for: method, route template and handler."""

    method: str
    route: str
    function: Callable[..., Any] | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.route}"


class _RequestNote:
    """A request's ASGI scope, turned into an :class:`Endpoint` only when one is needed.

    Set on every request; read only for a leak report. By then the router has put the
    matched route in the scope.
    """

    __slots__ = ("scope",)

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self.scope = scope

    def endpoint(self) -> Endpoint:
        scope = self.scope
        route = getattr(scope.get("route"), "path", None) or scope.get("path", "?")
        return Endpoint(scope.get("method", "WEBSOCKET"), route, scope.get("endpoint"))


_current: ContextVar[_RequestNote | None] = ContextVar("fastapi_dbpool_endpoint", default=None)


def current_endpoint() -> Endpoint | None:
    """The endpoint of the request being served in this context, if any."""
    note = _current.get()
    return note.endpoint() if note is not None else None


def note_endpoint(conn: HTTPConnection) -> Callable[[], None]:
    """Note *conn*'s request for log lines about its connections; return the undo.

    The request dependencies call this before they take a connection, and call the
    returned function when the request's unit of work has ended; worker threads and
    tasks started meanwhile inherit the note with the context. The method and route
    template are read only when a log line needs them.
    """
    token = _current.set(_RequestNote(conn.scope))

    def undo() -> None:
        # An abandoned unit may be finalised in another context; nothing to undo.
        with suppress(ValueError):
            _current.reset(token)

    return undo


@contextmanager
def endpoint_context(conn: HTTPConnection) -> Iterator[None]:
    """Note *conn*'s request for log lines about its connections, for the block."""
    undo = note_endpoint(conn)
    try:
        yield
    finally:
        undo()


def _is_framework(code: CodeType) -> bool:
    """True for FastAPI's and Starlette's functions that call into the application."""
    return code.co_name in _FRAMEWORK_CALLERS and (
        f"{os.sep}fastapi{os.sep}" in code.co_filename
        or f"{os.sep}starlette{os.sep}" in code.co_filename
    )


# The functions through which FastAPI and Starlette run an endpoint or a dependency.
_FRAMEWORK_CALLERS = frozenset(
    {"run_endpoint_function", "solve_dependencies", "run_in_threadpool", "app", "handle"}
)


# Whether a code object is one of them, decided once per code object.
_is_framework_code: dict[CodeType, bool] = {}


def _is_application(frame: FrameType) -> bool:
    module = frame.f_globals.get("__name__") or ""
    if module.partition(".")[0] in _INFRASTRUCTURE:
        return False
    filename = frame.f_code.co_filename
    if filename.startswith("<"):  # <frozen ...>, <string>
        return False
    return not filename.startswith(_LIBRARY_DIRS) and not any(
        marker in filename for marker in _PACKAGE_DIRS
    )


def capture_frames(frame: FrameType | None) -> Frames:
    """The application's frames from *frame* outwards, innermost first.

    SQLAlchemy's asyncio layer runs the pool inside a greenlet whose stack ends at the
    greenlet; the code that awaited it is on the parent greenlet's stack, so the walk
    continues there.
    """
    found: list[tuple[CodeType, int]] = []
    glet = getcurrent()
    while True:
        while frame is not None and len(found) < MAX_FRAMES:
            code = frame.f_code
            keep = _is_app_code.get(code)
            if keep is None:
                keep = _is_app_code[code] = _is_application(frame)
            if keep:
                found.append((code, frame.f_lineno))
            elif found:
                framework = _is_framework_code.get(code)
                if framework is None:
                    framework = _is_framework_code[code] = _is_framework(code)
                if framework:
                    # Past the web framework's call into the application: further out
                    # are middleware and the server, and the endpoint is reported
                    # anyway. Stopping here skips most of a request's stack.
                    return tuple(found)
            frame = frame.f_back
        glet = glet.parent
        if glet is None or len(found) >= MAX_FRAMES:
            return tuple(found)
        frame = glet.gr_frame


def format_frames(frames: Frames) -> list[str]:
    """``File "...", line N, in name`` for each frame, like a traceback."""
    return [f'File "{code.co_filename}", line {n}, in {code.co_qualname}' for code, n in frames]


def _function_frames(function: Callable[..., Any] | None) -> Frames:
    code = getattr(inspect.unwrap(function), "__code__", None) if function is not None else None
    return ((code, code.co_firstlineno),) if isinstance(code, CodeType) else ()


@dataclass(slots=True, eq=False)
class _Lease:
    """One checkout, from the moment the pool hands the connection out."""

    started: float
    frames: Frames
    request: _RequestNote | None
    returned: bool = False
    reported: bool = False


class LeakDetector:
    """Warn once per checkout held past *threshold* seconds; count it in *monitor*.

    A checkout costs a note (its time, the application's frames, the request) in a set;
    the check-in removes it. One timer on the event loop looks at the notes every
    quarter of *threshold* while any is out, and reports those held longer: a leak is
    reported between *threshold* and 1.25 x *threshold* after its checkout, and no
    timer is armed and cancelled per checkout (which cost more than the rest of the
    detector together). Checkouts in worker threads (the sync engine) start the timer
    on *loop*, or on the loop of the last checkout seen on an event loop.

    Args:
        monitor: The pool's monitor; its checkout and checkin hooks feed the detector.
        threshold: Seconds a connection may be held before it is reported.
        loop: The event loop that runs the timer for worker-thread checkouts.
    """

    def __init__(
        self,
        monitor: PoolMonitor,
        threshold: float,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.monitor = monitor
        self.threshold = threshold
        self.period = threshold / 4
        self._loop = loop
        # Checkin (any thread) and the sweep (loop thread) race to settle a lease.
        self._lock = threading.Lock()
        self._leases: set[_Lease] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_pending = False  # set before the sweeper is armed, from any thread
        monitor.on_checkout(self._checked_out)
        monitor.on_checkin(self._checked_in)

    def stop(self) -> None:
        """Stop the sweep and forget every lease (the app is stopping)."""
        with self._lock:
            self._leases = set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._sweep_pending = False
        self._loop = None

    # -- pool hooks -----------------------------------------------------------------

    def _checked_out(self, record: ConnectionPoolEntry) -> None:
        on_loop = _running_loop()
        loop = on_loop or self._loop
        if loop is None:
            return  # no event loop to time it with: sync code outside any app
        lease = _Lease(time.perf_counter(), capture_frames(sys._getframe(1)), _current.get())
        record.info[_LEASE] = lease
        with self._lock:
            self._leases.add(lease)
        if self._sweep_pending:
            return
        self._sweep_pending = True
        if on_loop is not None:
            self._loop = on_loop
            self._arm()
        else:
            with suppress(RuntimeError):  # the loop has closed: the app is gone
                loop.call_soon_threadsafe(self._arm)

    def _checked_in(self, record: ConnectionPoolEntry, held: float) -> None:
        lease = record.info.pop(_LEASE, None)
        if not isinstance(lease, _Lease):
            return
        with self._lock:
            lease.returned = True
            reported = lease.reported
            self._leases.discard(lease)
        if reported:
            logger.info(
                "connection of pool %s reported as leaked was returned after %.2f s",
                self.monitor.name,
                held,
                extra={
                    "pool": self.monitor.name,
                    "event": "leak_returned",
                    "held_seconds": round(held, 3),
                    "endpoint": str(lease.request.endpoint()) if lease.request else None,
                },
            )

    # -- on the event loop ------------------------------------------------------------

    def _arm(self) -> None:
        loop = self._loop
        if loop is None or self._sweeper is not None:
            return
        self._sweeper = loop.call_later(self.period, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.perf_counter()
        with self._lock:
            expired = [
                lease
                for lease in self._leases
                if not lease.reported and now - lease.started >= self.threshold
            ]
            for lease in expired:
                lease.reported = True
            # Keep sweeping while anything is out; a later checkout re-arms otherwise.
            self._sweep_pending = bool(self._leases)
        for lease in expired:
            self._report(lease, now)
        if self._sweep_pending:
            self._arm()

    def _report(self, lease: _Lease, now: float) -> None:
        self.monitor.leaks_total += 1
        held = now - lease.started
        endpoint = lease.request.endpoint() if lease.request is not None else None
        frames = lease.frames or _function_frames(endpoint.function if endpoint else None)
        where = format_frames(frames)
        logger.warning(
            "connection of pool %s held for %.2f s (DB_LEAK_THRESHOLD_S=%g) by %s; "
            "checked out at:\n  %s",
            self.monitor.name,
            held,
            self.threshold,
            endpoint or "work outside a request",
            "\n  ".join(where) or "(no application frame on the stack)",
            extra={
                "pool": self.monitor.name,
                "event": "leak_suspected",
                "held_seconds": round(held, 3),
                "threshold_seconds": self.threshold,
                "endpoint": str(endpoint) if endpoint else None,
                "checked_out_at": where,
            },
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def watch_for_leaks(
    monitor: PoolMonitor, threshold: float, loop: asyncio.AbstractEventLoop | None = None
) -> LeakDetector | None:
    """A :class:`LeakDetector` on *monitor*, or None when *threshold* is 0 (off)."""
    return LeakDetector(monitor, threshold, loop) if threshold > 0 else None
