"""Shutdown: in-flight requests get ``SHUTDOWN_GRACE_S`` to finish, then a 503, never a 500.

On SIGTERM uvicorn stops accepting connections and waits for the open ones; past its
``--timeout-graceful-shutdown`` it cancels the request tasks, and a request whose
response has not started is answered 500 (``CancelledError: Task cancelled, timeout
graceful shutdown exceeded``). A request blocked on a row lock at that moment is a
client's 500 for a server's decision.

The guard makes that decision first, and answers it properly. It is a pure ASGI
middleware that knows every request in flight. When the server is told to stop (the
SIGTERM or SIGINT that uvicorn handles, seen through a handler chained in front of
uvicorn's), it gives each request in flight until ``SHUTDOWN_GRACE_S`` after the signal:

* a request that finishes in time is answered as usual;
* one that does not is cancelled (its transaction rolled back, its connection
  discarded, as for any cancelled request) and answered 503 with ``Retry-After`` and
  ``Connection: close``, so the client retries elsewhere; its ``code`` is
  ``shutdown_grace_expired``: it was running, so a write may have committed;
* a request that arrives after the signal on a connection still open is answered 503
  at once, ``code`` ``shutting_down``: the app never saw it, nothing ran.

Both bodies have the shape of every error answer (``detail``, ``code``, ``reason``
``shutting_down``: :class:`~fastapi_dbpool.errors.ErrorBody`).

For this to come before the server's own cancel, ``SHUTDOWN_GRACE_S`` must be shorter
than the server's timeout (uvicorn ``--timeout-graceful-shutdown``; ``make run`` sets
it to ``SHUTDOWN_GRACE_S + 5``). Another server can call :meth:`ShutdownGuard.begin`
when it starts shutting down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import SettingsError

__all__ = ["ShutdownGuard", "ShutdownSettings", "install_shutdown_guard"]

logger = logging.getLogger("fastapi_dbpool")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The body of every error answer ({"detail", "code", "reason"}: errors.ErrorBody), with
# a code that says whether the request ran. A request refused on arrival never reached
# the app: nothing it would have done happened. One cut at the end of the grace period
# was running (a write may have committed just before the cut): its outcome is unknown.
REFUSED = "shutting_down"
CUT = "shutdown_grace_expired"
_DETAILS = {
    REFUSED: "The server is shutting down and did not start this request; retry it.",
    CUT: (
        "The server shut down before this request finished (SHUTDOWN_GRACE_S); "
        "it may or may not have taken effect."
    ),
}


def _answer(code: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"detail": _DETAILS[code], "code": code, "reason": "shutting_down"})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"connection", b"close"),
    ]
    return headers, body.encode()


_ANSWERS = {code: _answer(code) for code in _DETAILS}


class ShutdownSettings(BaseSettings):
    """How the app stops; read from the environment (not database settings)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    grace_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        validation_alias=AliasChoices("SHUTDOWN_GRACE_S", "grace_s"),
        description="Seconds in-flight requests get to finish after SIGTERM; then 503.",
    )

    @classmethod
    def from_env(cls) -> ShutdownSettings:
        """Read the settings; raise SettingsError naming the variable when invalid."""
        try:
            return cls()
        except ValidationError as error:
            first = error.errors()[0]
            raise SettingsError(f"SHUTDOWN_GRACE_S: {first['msg']} (seconds, 0 to 3600)") from None


class _InFlight:
    """One request in flight: how to answer it, and whether it was answered by us."""

    __slots__ = ("answer", "refused", "send", "started", "timeout")

    def __init__(self, send: Send, timeout: asyncio.Timeout) -> None:
        self.send = send
        self.timeout = timeout
        self.started = False  # the handler started its response
        self.refused = False  # we answered 503; the handler's messages are dropped
        self.answer: asyncio.Task[None] | None = None  # sending that 503


class ShutdownGuard:
    """The requests in flight, and the deadline they get once shutdown begins."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.deadline: float | None = None  # loop time; None until shutdown begins
        self._in_flight: set[_InFlight] = set()
        self._answers: set[asyncio.Task[None]] = set()  # strong references

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`begin` was called."""
        return self.deadline is not None

    def begin(self) -> None:
        """Start the grace period: requests in flight are cut when it ends.

        Call it on the event loop's thread; calling it again changes nothing.
        """
        if self.deadline is not None:
            return
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.grace_s
        logger.info(
            "shutting down: %d request(s) in flight get %g s (SHUTDOWN_GRACE_S)",
            len(self._in_flight),
            self.grace_s,
            extra={"event": "shutdown", "in_flight": len(self._in_flight)},
        )
        for request in self._in_flight:
            request.timeout.reschedule(self.deadline)
        loop.call_at(self.deadline, self._answer_all)

    def _answer_all(self) -> None:
        # Answer now, without waiting for the cancelled handlers to unwind: a cleanup
        # can be stuck behind a statement that nothing interrupts (SQLite waiting for
        # another process's lock), and the server's own cancel would then answer 500.
        for request in self._in_flight:
            if not request.started and not request.refused:
                request.refused = True
                task = request.answer = asyncio.ensure_future(_refuse(request.send, CUT))
                self._answers.add(task)
                task.add_done_callback(self._answers.discard)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap *app*: the guard's ASGI middleware."""
        guard = self

        async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            if guard.deadline is not None:
                await _refuse(send, REFUSED)  # before the app: nothing ran
                return
            # No deadline until shutdown begins; then begin() reschedules it.
            timeout = asyncio.timeout(None)
            request = _InFlight(send, timeout)

            async def tracking_send(message: Message) -> None:
                if request.refused:
                    return  # answered 503 already; the handler ran past its deadline
                if message["type"] == "http.response.start":
                    request.started = True
                await send(message)

            try:
                async with timeout:
                    guard._in_flight.add(request)
                    try:
                        await app(scope, receive, tracking_send)
                    finally:
                        guard._in_flight.discard(request)
            except TimeoutError:
                if not timeout.expired():
                    raise  # the handler's own timeout, not ours
            except asyncio.CancelledError:
                if not request.refused:
                    raise
                # The server cancels what still runs after its own timeout; this
                # request has its answer, so it ends here instead of as an error.
            else:
                return
            guard._log_cut(scope, request)
            if request.answer is not None:
                await request.answer  # the 503 is sent before the request ends

        return guarded

    def _log_cut(self, scope: Scope, request: _InFlight) -> None:
        logger.warning(
            "%s %s cut by shutdown after %g s (SHUTDOWN_GRACE_S)%s",
            scope.get("method"),
            scope.get("path"),
            self.grace_s,
            "" if request.refused else "; its response had started and is cut short",
            extra={"event": "shutdown_cut", "answered_503": request.refused},
        )

    def hook_signals(self) -> Callable[[], None]:
        """Chain a handler in front of the server's SIGTERM/SIGINT; return the undo.

        Only handlers installed from Python (uvicorn's) are chained: without one, the
        signal's default action ends the process and there is no shutdown to guard.
        Does nothing outside the main thread (a test client's lifespan).
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        previous: dict[int, Any] = {}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.begin)
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, frame)

        for signum in _SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                previous[signum] = handler
                signal.signal(signum, on_signal)

        def undo() -> None:
            for signum, handler in previous.items():
                if signal.getsignal(signum) is on_signal:
                    signal.signal(signum, handler)

        return undo


async def _refuse(send: Send, code: str) -> None:
    headers, body = _ANSWERS[code]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install_shutdown_guard(app: Any, settings: ShutdownSettings | None = None) -> ShutdownGuard:
    """Guard *app*'s requests at shutdown (done by :meth:`Database.install`).

    The middleware is added with ``app.add_middleware``, so it sees every route, and
    the signal handler is chained in the app's lifespan (the server has installed its
    own by then) and removed after it.
    """
    settings = settings if settings is not None else ShutdownSettings.from_env()
    guard = ShutdownGuard(settings.grace_s)
    app.add_middleware(_GuardMiddleware, guard=guard)
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        undo = guard.hook_signals()
        try:
            async with original(app_) as state:
                yield state
        finally:
            undo()

    app.router.lifespan_context = lifespan
    app.state.fastapi_dbpool_shutdown = guard
    return guard


class _GuardMiddleware:
    """``app.add_middleware`` form of :meth:`ShutdownGuard.middleware`."""

    def __init__(self, app: ASGIApp, guard: ShutdownGuard) -> None:
        self._call = guard.middleware(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._call(scope, receive, send)
