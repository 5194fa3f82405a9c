"""Request metrics: a pure ASGI middleware counting and timing requests by route template.

Labels are ``method``, ``route`` and ``status``. ``route`` is the template the router
matched (``/users/{user_id}``), never the raw path: ids must not become label values,
or every user would add a time series. Requests no route matched share the one label
:data:`UNMATCHED`; methods outside HTTP's standard set share ``OTHER``. The number of
series is therefore bounded by the app's routes, not by its clients.

A pure ASGI middleware (not ``BaseHTTPMiddleware``) adds one wrapped ``send`` and two
clock reads per request, and does not buffer or re-task the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UNMATCHED", "RequestMetricsMiddleware", "route_template"]

UNMATCHED = "<unmatched>"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})

# Records one finished request: method, route template, status, duration in seconds.
RequestRecorder = Callable[[str, str, int, float], None]


def route_template(scope: Scope, entry_root_path: str = "") -> str:
    """Return the route template the router matched for *scope*, or :data:`UNMATCHED`.

    Read after the app has handled the request: the router stores the matched route
    in ``scope["route"]``. Under a mount the route's template is relative to the
    mount, whose prefix is what the mounts added to ``root_path`` since
    *entry_root_path*. A mounted app that keeps no route (static files, a plain ASGI
    app, or no match inside it) is labelled ``<mount prefix>/{path}``: one label per
    mount. A mount path with parameters contributes its matched text, since the
    router keeps no template for it.
    """
    root_path: str = scope.get("root_path", "")
    prefix = root_path[len(entry_root_path) :] if root_path.startswith(entry_root_path) else ""
    route = scope.get("route")
    path_format = getattr(route, "path_format", None)
    if isinstance(route, Mount) or (not isinstance(path_format, str) and prefix):
        return prefix + "/{path}"
    if not isinstance(path_format, str):
        return UNMATCHED
    return prefix + path_format


class RequestMetricsMiddleware:
    """Time each HTTP request and hand it to *record* with its route template and status.

    Args:
        app: The ASGI app to wrap.
        record: Called once per finished request as ``record(method, route, status,
            seconds)``. A request whose handler raised before any response started
            is recorded as 500 (the server answers it so); a cancelled request
            (client gone, server stopping) is not recorded.
    """

    def __init__(self, app: ASGIApp, record: RequestRecorder) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer the request through the app, recording its route, status and duration."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        entry_root_path: str = scope.get("root_path", "")
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._record(scope, entry_root_path, status, started)
            raise
        self._record(scope, entry_root_path, status, started)

    def _record(self, scope: Scope, entry_root_path: str, status: int, started: float) -> None:
        method: str = scope["method"]
        self.record(
            method if method in _METHODS else "OTHER",
            route_template(scope, entry_root_path),
            status,
            time.perf_counter() - started,
        )
