"""The shutdown guard, driven as an ASGI middleware: no server, no database, no signal."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fastapi_dbpool.errors import ErrorBody, SettingsError
from fastapi_dbpool.request.shutdown import ShutdownGuard, ShutdownSettings

GRACE_S = 0.2

Message = dict[str, Any]


async def call(guard: ShutdownGuard, app: Any) -> tuple[list[Message], float]:
    """One HTTP request through the guard; the messages sent and when the first came."""
    sent: list[Message] = []
    first_at: list[float] = []

    async def receive() -> Message:
        await asyncio.Event().wait()  # no body, and no disconnect
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        first_at.append(time.monotonic())
        sent.append(message)

    await guard.middleware(app)({"type": "http", "method": "GET", "path": "/x"}, receive, send)
    return sent, first_at[0] if first_at else float("nan")


async def answer(send: Any, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def refused(messages: list[Message], code: str) -> bool:
    """A 503 with Retry-After, Connection: close, and an error body of *code*."""
    start = messages[0]
    headers = dict(start["headers"])
    body = ErrorBody.model_validate_json(messages[1]["body"])  # every error's shape
    return (
        start["status"] == 503
        and headers[b"retry-after"] == b"1"
        and headers[b"connection"] == b"close"
        and int(headers[b"content-length"]) == len(messages[1]["body"])
        and (body.code, body.reason) == (code, "shutting_down")
    )


# A request cut at the end of the grace period was running: it may have written.
CUT = "shutdown_grace_expired"
# One refused on arrival never reached the app: nothing ran.
NOT_STARTED = "shutting_down"


async def test_request_that_finishes_within_the_grace_period_is_answered() -> None:
    guard = ShutdownGuard(GRACE_S)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(GRACE_S / 4)
        await answer(send)

    request = asyncio.create_task(call(guard, app))
    await asyncio.sleep(0)  # the request is in flight
    guard.begin()
    sent, _ = await request
    assert sent[0]["status"] == 200


async def test_request_past_the_grace_period_is_answered_503_and_cancelled() -> None:
    guard = ShutdownGuard(GRACE_S)
    cancelled = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.Event().wait()  # blocked on a lock that never comes free
        except asyncio.CancelledError:
            cancelled.set()
            raise

    request = asyncio.create_task(call(guard, app))
    await asyncio.sleep(0)
    began = time.monotonic()
    guard.begin()
    sent, at = await request
    assert refused(sent, CUT), sent
    assert GRACE_S * 0.9 <= at - began < GRACE_S + 0.5
    assert cancelled.is_set()


async def test_answer_does_not_wait_for_a_stuck_cleanup() -> None:
    guard = ShutdownGuard(GRACE_S)
    cleanup = 1.0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # A cleanup that outlasts the cancellation (a statement nothing interrupts),
            # after which the handler tries to answer: too late, dropped.
            await asyncio.sleep(cleanup)
            await answer(send, 500)
            raise

    request = asyncio.create_task(call(guard, app))
    await asyncio.sleep(0)
    began = time.monotonic()
    guard.begin()
    sent, at = await request
    assert refused(sent, CUT) and len(sent) == 2, sent  # the handler's own 500 was dropped
    assert at - began < cleanup


async def test_request_after_shutdown_began_is_refused_at_once() -> None:
    guard = ShutdownGuard(GRACE_S)
    guard.begin()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("must not run")

    sent, _ = await call(guard, app)
    assert refused(sent, NOT_STARTED), sent


async def test_the_handlers_own_timeout_is_not_mistaken_for_shutdown() -> None:
    guard = ShutdownGuard(GRACE_S)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)

    with pytest.raises(TimeoutError):
        await call(guard, app)


def test_grace_period_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHUTDOWN_GRACE_S", "-1")
    with pytest.raises(SettingsError, match="SHUTDOWN_GRACE_S"):
        ShutdownSettings.from_env()
    monkeypatch.setenv("SHUTDOWN_GRACE_S", "2.5")
    assert ShutdownSettings.from_env().grace_s == 2.5
