"""The request metrics middleware: route templates, never raw paths, and bounded labels."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter, FastAPI, HTTPException
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.observe.http_metrics import UNMATCHED, RequestMetricsMiddleware
from fastapi_dbpool.observe.metrics import Metrics

Recorded = list[tuple[str, str, int, float]]


def _starlette_records_routes() -> bool:
    """True when Starlette's router stores the matched route in ``scope["route"]``.

    Starlette 1.x does; older releases (those FastAPI 0.121 runs on) leave it to
    FastAPI's own routes, so a plain Starlette route under a mount is labelled by its
    mount: still one bounded label.
    """
    scope: dict = {"type": "http", "path": "/x", "method": "GET", "root_path": ""}

    async def receive() -> dict:
        return {"type": "http.request"}

    async def send(message: dict) -> None:
        pass

    asyncio.run(Router([Route("/x", PlainTextResponse("x"))])(scope, receive, send))
    return "route" in scope


STATIC_LABEL = "/static/{name}" if _starlette_records_routes() else "/static/{path}"


def build_app(recorded: Recorded) -> FastAPI:
    app = FastAPI()
    users = APIRouter(prefix="/users")

    @users.get("/{user_id}")
    async def get_user(user_id: int) -> dict[str, int]:
        if user_id == 404:
            raise HTTPException(404)
        return {"id": user_id}

    @users.post("/{user_id}/boom")
    async def boom(user_id: int) -> None:
        raise RuntimeError("a bug")

    @users.get("/{user_id}/slow")
    async def slow(user_id: int) -> dict[str, int]:
        await asyncio.sleep(0.05)
        return {"id": user_id}

    app.include_router(users)

    sub = FastAPI()

    @sub.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    app.mount("/v1", sub)

    async def file(request: object) -> PlainTextResponse:
        return PlainTextResponse("file")

    app.mount("/static", Mount("", routes=[Route("/{name}", file)]))
    app.mount("/raw", PlainTextResponse("raw"))
    app.add_middleware(RequestMetricsMiddleware, record=lambda *args: recorded.append(args))
    return app


@pytest.fixture
def recorded() -> Recorded:
    return []


@pytest.fixture
async def client(recorded: Recorded):
    transport = httpx.ASGITransport(app=build_app(recorded), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def labels(recorded: Recorded) -> list[tuple[str, str, int]]:
    return [(method, route, status) for method, route, status, _ in recorded]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/users/7", ("GET", "/users/{user_id}", 200)),
        ("GET", "/users/404", ("GET", "/users/{user_id}", 404)),
        ("GET", "/users/abc", ("GET", "/users/{user_id}", 422)),
        ("DELETE", "/users/7", ("DELETE", "/users/{user_id}", 405)),
        ("GET", "/nowhere/7", ("GET", UNMATCHED, 404)),
        ("GET", "/v1/things/12", ("GET", "/v1/things/{thing_id}", 200)),
        ("GET", "/v1/nothing/12", ("GET", "/v1/{path}", 404)),
        ("GET", "/static/logo-123.png", ("GET", STATIC_LABEL, 200)),
        ("GET", "/raw/a/b/42", ("GET", "/raw/{path}", 200)),
        ("BREW", "/users/7", ("OTHER", "/users/{user_id}", 405)),
        ("POST", "/users/7/boom", ("POST", "/users/{user_id}/boom", 500)),
    ],
)
async def test_route_template_labels(
    client: httpx.AsyncClient, recorded: Recorded, method: str, path: str, expected: tuple
) -> None:
    response = await client.request(method, path)
    assert response.status_code == expected[2]
    assert labels(recorded) == [expected]


async def test_ids_never_become_labels() -> None:
    settings = DatabaseSettings(url="sqlite:///unused.db")
    metrics = Metrics([Database(settings)])
    app = build_app([])
    app.user_middleware.clear()
    app.add_middleware(RequestMetricsMiddleware, record=metrics.record_request)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        for user_id in range(1, 60):
            await c.get(f"/users/{user_id}")
            await c.get(f"/missing/{user_id}")
    text, _ = metrics.render()
    series = [
        line for line in text.decode().splitlines() if line.startswith("http_requests_total{")
    ]
    assert sorted(series) == [
        'http_requests_total{method="GET",route="/users/{user_id}",status="200"} 59.0',
        'http_requests_total{method="GET",route="<unmatched>",status="404"} 59.0',
    ]


async def test_duration_covers_the_handler(client: httpx.AsyncClient, recorded: Recorded) -> None:
    await client.get("/users/3/slow")
    ((_, route, status, seconds),) = recorded
    assert (route, status) == ("/users/{user_id}/slow", 200)
    assert 0.04 < seconds < 5


async def test_root_path_is_not_part_of_the_template(recorded: Recorded) -> None:
    transport = httpx.ASGITransport(app=build_app(recorded), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/api/users/5")).status_code == 200
        assert (await c.get("/api/v1/things/5")).status_code == 200
    assert labels(recorded) == [
        ("GET", "/users/{user_id}", 200),
        ("GET", "/v1/things/{thing_id}", 200),
    ]


async def test_cancelled_request_is_not_recorded(recorded: Recorded) -> None:
    app = build_app(recorded)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/users/1/slow",
        "raw_path": b"/users/1/slow",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("test", 80),
        "client": ("test", 1),
    }

    async def receive() -> dict:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        pass

    task = asyncio.create_task(app(scope, receive, send))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert recorded == []


async def test_websocket_and_lifespan_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope, receive, send) -> None:
        seen.append(scope["type"])

    middleware = RequestMetricsMiddleware(inner, record=lambda *a: pytest.fail("recorded"))
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await middleware({"type": "websocket", "path": "/ws"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]
