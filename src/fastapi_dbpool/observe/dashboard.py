"""A live pool dashboard: ``GET /pool`` (one HTML page) and ``GET /pool/stats`` (its JSON).

The page charts each pool over the last minutes (connections in use, overflow,
waiting callers, checkout wait and hold time, checkouts a second) and refreshes every
second from ``/pool/stats``. Its script and styles ship with the package and are
served next to it: no build step, nothing fetched from elsewhere, and a
Content-Security-Policy that forbids it.

The figures are this process's. Behind several workers each refresh may be answered by
another one (the page shows which, by pid); Prometheus adds the workers up.

``DB_METRICS_TOKEN`` protects every route of the dashboard, like ``/metrics``. A 401
carries a ``Basic`` challenge, so a browser asks for the token (as the password,
any user name) and sends it with the page's own requests too.
"""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import SecretStr
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .auth import token_check
from .history import PoolHistory, sample_every_second

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["PoolDashboard"]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _asset(name: str) -> str:
    return (resources.files(__package__) / "static" / name).read_text(encoding="utf-8")


class PoolDashboard:
    """Per-second history of some pools, and the routes that show it.

    Args:
        databases: The pools to show.
        window: Seconds of history kept and charted.
    """

    def __init__(self, databases: Sequence[Database], *, window: int = 300) -> None:
        self.histories = [
            PoolHistory(monitor, window)
            for database in databases
            for monitor in database.monitors()
        ]
        self.window = window
        self._page = _asset("dashboard.html")
        self._assets = {name: _asset(name) for name in _ASSETS}

    def stats(self) -> dict[str, object]:
        """The JSON of ``/pool/stats``: each pool now and its last points."""
        return {
            "pid": os.getpid(),
            "interval_s": 1,
            "window_s": self.window,
            "pools": [history.as_dict() for history in self.histories],
        }

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Sample the pools once a second while the app runs."""
        task = asyncio.create_task(sample_every_second(self.histories))
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    def router(self, path: str = "/pool", *, token: SecretStr | None = None) -> APIRouter:
        """Routes ``GET <path>``, ``<path>/stats`` and the page's script and styles."""
        guard = token_check(token, challenge='Basic realm="pool dashboard", charset="UTF-8"')
        # Tagged, like every route the library adds: an app whose
        # generate_unique_id_function reads route.tags[0] must keep working.
        router = APIRouter(dependencies=[Depends(guard)], tags=["pool"])
        security = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}

        @router.get(path, include_in_schema=False)
        async def page(request: Request) -> HTMLResponse:
            base = html.escape(request.scope.get("root_path", "") + path, quote=True)
            body = self._page.replace("{{base}}", base)
            return HTMLResponse(body, headers=security | {"Cache-Control": "no-store"})

        @router.get(path + "/stats", include_in_schema=False)
        async def stats() -> JSONResponse:
            return JSONResponse(self.stats(), headers={"Cache-Control": "no-store"})

        @router.get(path + "/{asset}", include_in_schema=False)
        async def asset(asset: str) -> Response:
            media_type = _ASSETS.get(asset)
            if media_type is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such dashboard file")
            return Response(self._assets[asset], media_type=media_type, headers=security)

        return router
