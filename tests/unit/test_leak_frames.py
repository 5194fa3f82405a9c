"""Leak detection's stack walk: the application's frames, up to the framework's call."""

from __future__ import annotations

import sys

import httpx
from fastapi import FastAPI

from fastapi_dbpool.observe.leaks import Frames, capture_frames, format_frames


def take_connection() -> Frames:
    """Stands for application code that checks a connection out."""
    return capture_frames(sys._getframe())


async def test_walk_stops_where_the_framework_calls_the_endpoint() -> None:
    app = FastAPI()
    seen: list[Frames] = []

    @app.get("/")
    async def endpoint() -> None:
        seen.append(take_connection())

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/")).status_code == 200
    names = [line.rsplit(" in ", 1)[1].rsplit(".", 1)[-1] for line in format_frames(seen[0])]
    # This test function is application code too, but it sits beyond FastAPI, httpx and
    # the event loop: the walk ends at the framework's call into the endpoint.
    assert names == ["take_connection", "endpoint"], names


def test_without_a_framework_the_walk_goes_to_the_top() -> None:
    def outer() -> Frames:
        return take_connection()

    names = [line.rsplit(" in ", 1)[1].rsplit(".", 1)[-1] for line in format_frames(outer())]
    assert names[:3] == [
        "take_connection",
        "outer",
        "test_without_a_framework_the_walk_goes_to_the_top",
    ]
